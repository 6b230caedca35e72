"""Industrial write and control commands from a host that is not the device's master.

A PLC, RTU or outstation is polled by one SCADA master (or a known pair); the
master is the host seen issuing requests to the device first, plus any address in
``known_masters`` (engineering stations, redundant servers).  A write or control
command (Modbus write functions, DNP3 write/select/operate/restart, S7comm write,
download, PI service or stop) from any other host is what an intruder on the
plant network does to change the process.  Reads by other hosts (historians, HMIs)
are not reported.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import LruDict, PacketDetector
from detection.grouping import Groups
from detection.rules.compiler import in_networks
from sensors.masks import true_mask

MODBUS_PORT, DNP3_PORT, S7_PORT = 502, 20000, 102
MODBUS_WRITES = (5, 6, 15, 16, 21, 22, 23)
DNP3_CONTROLS = (*range(2, 22), 24, 25, 27, 28, 31)  # write, select/operate, freeze, restart, app control, files
S7_CONTROLS = (0x05, 0x1A, 0x1B, 0x1C, 0x28, 0x29)
S7_JOB = 1


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return true_mask(values)


class IcsCommandFromNewMaster(PacketDetector):
    """Per device, the master that polls it; write/control requests from other hosts are flagged."""

    rule_id = "7a1d5e93-2c4b-4f8e-b061-93e5d2a7c4f8"
    title = "Industrial write or control command from a host not seen as the device's master"
    description = ("A Modbus/DNP3/S7comm write or control request to a controller from a host other than the "
                   "master that polls it: manipulation of the process from a foothold on the plant network.")
    level = "high"
    tags = ["attack.t0855", "attack.t0831", "attack.t0836", "liaowang.ics"]
    category = "Attempted Administrator Privilege Gain"
    columns: ClassVar[list[str]] = ["ts", "src_ip", "dst_ip", "dst_port", "modbus_func", "dnp3_func", "s7_rosctr",
                                    "s7_func"]
    group_by = ("src_ip", "dst_ip")

    def __init__(self, known_masters: tuple[str, ...] = (), window_s: float = 60.0) -> None:
        self.known_masters = known_masters
        self.window_s = window_s

    def select(self, packets: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Requests to a device (towards its service port)."""
        port = packets.column("dst_port")
        modbus = pc.and_(pc.equal(port, MODBUS_PORT), pc.is_valid(packets.column("modbus_func")))
        dnp3 = pc.and_(pc.equal(port, DNP3_PORT), pc.less(packets.column("dnp3_func"), 128))
        s7 = pc.and_(pc.equal(port, S7_PORT), pc.equal(packets.column("s7_rosctr"), S7_JOB))
        return _mask(modbus) | _mask(dnp3) | _mask(s7)

    def evaluate(self, events: pa.Table) -> np.ndarray:
        if not hasattr(self, "masters_"):
            self.masters_: LruDict[str, str] = LruDict()  # device address -> its master
        src, dst = events.column("src_ip"), events.column("dst_ip")
        # a device first seen in this window: its master is the first host that sent it a request
        firsts = pa.array(Groups([dst]).first)
        for d, s in zip(dst.take(firsts).to_pylist(), src.take(firsts).to_pylist()):
            self.masters_.setdefault(d, s)
        devices = pa.array(list(self.masters_), pa.string())
        master = pa.array(list(self.masters_.values()), pa.string()).take(pc.index_in(dst, value_set=devices))
        control = (_mask(pc.is_in(events.column("modbus_func"), pa.array(MODBUS_WRITES, pa.uint8())))
                   | _mask(pc.is_in(events.column("dnp3_func"), pa.array(DNP3_CONTROLS, pa.uint8())))
                   | _mask(pc.is_in(events.column("s7_func"), pa.array(S7_CONTROLS, pa.uint8()))))
        out = control & _mask(pc.not_equal(src, master)) & ~in_networks(src, self.known_masters)
        self.reasons_ = [f"the device's master is {m}" for m in master.filter(pa.array(out)).to_pylist()]
        return out

    def explain(self, events: pa.Table) -> list[str | None]:
        return list(self.reasons_)
