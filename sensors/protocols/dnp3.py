"""DNP3 over TCP/UDP port 20000 (IEEE 1815): link header and the application function code.

A frame starts 0x05 0x64, then length, control, destination, source and a CRC (10
bytes); user data follows in 16-byte blocks each with its own CRC.  The first
block begins with the transport byte; when it is the first fragment (FIR) the
application control byte and the function code follow, so the code is at byte 12.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 20000
START = 0x0564
FIR = 0x40


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = (off + 10 <= end) & (pk.u16(off) == START) & (pk.u8(off + 2) >= 5)
    rows, off, end = rows[ok], off[ok], end[ok]
    pk.put("app_proto", rows, AppProto.DNP3)
    # user data of at least transport + application control + function code, first fragment
    has_func = (pk.u8(off + 2) >= 8) & (off + 13 <= end) & ((pk.u8(off + 10) & FIR) != 0)
    pk.put("dnp3_func", rows[has_func], pk.u8(off[has_func] + 12))
