"""Large outbound transfer to an external host never seen before (exfiltration)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import FlowDetector, external, private


class LargeTransferToNewHost(FlowDetector):
    """Flows from an internal host that send at least ``min_bytes`` to an external address that no
    earlier window (or the baseline given to ``fit``) had seen."""

    rule_id = "ac2a4a0e-6f0b-4c43-9d2e-4b7f6a1e93c5"
    title = "Large outbound transfer to a never-seen external host"
    description = ("An internal host sent at least min_bytes in one flow to an external address not seen before "
                   "in the baseline or earlier traffic: possible exfiltration.")
    level = "high"
    tags = ["attack.exfiltration", "attack.t1048", "attack.t1567"]
    category = "Potential Corporate Privacy Violation"
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "src2dst_bytes"]
    group_by = ("src_ip", "dst_ip")

    def __init__(self, window_s: float = 600.0, min_bytes: int = 20_000_000, max_seen: int = 2_000_000) -> None:
        self.window_s = window_s
        self.min_bytes = min_bytes
        self.max_seen = max_seen

    def fit(self, flows: pa.Table) -> LargeTransferToNewHost:
        self.seen_: pa.Array = pc.unique(flows.column("dst_ip")).drop_null()
        return self

    def select(self, flows: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Flows to external hosts: the only destinations judged, and the only ones worth remembering."""
        return external(flows.column("dst_ip"))

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        seen = getattr(self, "seen_", pa.array([], pa.string()))
        dst = flows.column("dst_ip")
        big = flows.column("src2dst_bytes").to_numpy(zero_copy_only=False) >= self.min_bytes
        out = big & private(flows.column("src_ip")) & external(dst)
        if out.any():
            out &= ~np.asarray(pc.is_in(dst, value_set=seen).to_numpy(zero_copy_only=False), dtype=bool)
        seen = pc.unique(pa.concat_arrays([seen, pc.unique(dst).drop_null()]))
        # bounded: the oldest-learned addresses go first (one might then count as new again)
        self.seen_ = seen.slice(max(len(seen) - self.max_seen, 0))
        return out
