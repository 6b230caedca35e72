"""C2 beaconing: many connections from one host to one service at a regular period, of similar size."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import FlowDetector, external

#: periodic by design: DNS, NTP, NetBIOS/mDNS/LLMNR/SSDP announcements, PFCP/GTP-C echo
PERIODIC_SERVICES = [53, 123, 137, 138, 1900, 5353, 5355, 8805, 2123]


class Beaconing(FlowDetector):
    rule_id = "6843a2a8-53cc-4693-9456-d1714c043b3a"
    title = "C2 beaconing (regular connections of similar size to one service)"
    description = ("At least min_flows connections from one host to one external service within the window, "
                   "started at a regular period (robust jitter below max_jitter) and of similar size.")
    level = "high"
    tags = ["attack.command_and_control", "attack.t1071", "attack.t1573"]
    category = "A Network Trojan was detected"
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "dst_port", "ip_proto",
                                    "src2dst_bytes"]
    group_by = ("src_ip", "dst_ip", "dst_port")

    def __init__(self, window_s: float = 3600.0, min_flows: int = 8, min_period_s: float = 1.0,
                 max_jitter: float = 0.1, max_size_spread: float = 0.25) -> None:
        self.window_s = window_s
        self.min_flows = min_flows
        self.min_period_s = min_period_s
        self.max_jitter = max_jitter
        self.max_size_spread = max_size_spread

    def select(self, flows: pa.Table | pa.RecordBatch) -> np.ndarray:
        """TCP and UDP to an external service that is not periodic by design: C2 servers are on the
        internet; between internal hosts periodic polling is the norm (5G NF heartbeats to the NRF,
        SCADA polling, monitoring)."""
        proto = flows.column("ip_proto").to_numpy(zero_copy_only=False)
        port = pc.fill_null(flows.column("dst_port"), 0).to_numpy(zero_copy_only=False)
        return np.isin(proto, (6, 17)) & ~np.isin(port, PERIODIC_SERVICES) & external(flows.column("dst_ip"))

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        n = flows.num_rows
        out = np.zeros(n, dtype=bool)
        proto = flows.column("ip_proto").to_numpy(zero_copy_only=False)
        port = pc.fill_null(flows.column("dst_port"), 0).to_numpy(zero_copy_only=False)
        candidate = self.select(flows)
        if candidate.sum() < self.min_flows:
            return out
        key = pc.binary_join_element_wise(flows.column("src_ip"), flows.column("dst_ip"),
                                          pa.array(port.astype(str)), pa.array(proto.astype(str)), "|")
        codes = pc.dictionary_encode(key).combine_chunks().indices.to_numpy(zero_copy_only=False)
        codes = np.where(candidate, codes, -1)
        counts = np.bincount(codes[codes >= 0], minlength=int(codes.max()) + 1 if n else 0)
        start = flows.column("first_seen").cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e9
        size = flows.column("src2dst_bytes").to_numpy(zero_copy_only=False).astype(np.float64)
        for group in np.flatnonzero(counts >= self.min_flows):  # few groups are this large
            rows = np.flatnonzero(codes == group)
            gaps = np.diff(np.sort(start[rows]))
            period = np.median(gaps)
            if period < self.min_period_s:
                continue
            jitter = np.median(np.abs(gaps - period)) / period  # robust to a missed or extra beat
            sizes = size[rows]
            spread = np.median(np.abs(sizes - np.median(sizes))) / max(np.median(sizes), 1.0)
            if jitter <= self.max_jitter and spread <= self.max_size_spread:
                out[rows] = True
        return out
