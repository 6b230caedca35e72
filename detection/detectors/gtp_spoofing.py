"""GTP-U TEID / UE address spoofing: an uplink TEID carrying inner sources other than its UE's."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import FlowDetector
from detection.grouping import unique
from sensors.masks import present, true_mask


class TeidSpoofing(FlowDetector):
    """Per tunnel endpoint and TEID, the inner source that most flows come from is the UE's
    address; flows from any other inner source on that TEID are spoofed or injected.

    A downlink TEID (towards the gNB) carries many sources to one UE: TEIDs whose
    flows all go to one inner destination from several sources are taken as downlink
    and not judged (the limit of a passive view without the N4 session rules).
    """

    rule_id = "8b236e4e-dd2c-471f-ac1e-eab2da481558"
    title = "GTP-U TEID spoofing (inner source address not the UE's for this TEID)"
    description = ("Uplink GTP-U flows on one TEID from an inner source address other than the UE address learned "
                   "for that TEID: traffic injected with a stolen or guessed TEID, or UE address spoofing.")
    level = "critical"
    tags = ["fight.fgt1599.503", "attack.t1599", "attack.defense_evasion", "liaowang.5g"]
    category = "Attempted Administrator Privilege Gain"
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "teid", "tunnel_dst_ip",
                                    "tunnel_type"]
    group_by = ("tunnel_dst_ip", "teid", "src_ip")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s

    def select(self, flows: pa.Table | pa.RecordBatch) -> np.ndarray:
        """GTP-U flows with their TEID."""
        return true_mask(pc.equal(flows.column("tunnel_type"), "gtpu")) & present(flows.column("teid"))

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        n = flows.num_rows
        out = np.zeros(n, dtype=bool)
        gtp = self.select(flows)
        if not gtp.any():
            return out
        # a UE also sends from its IPv6 link-local address (router and neighbour discovery)
        src_text = flows.column("src_ip")
        link_local = true_mask(pc.starts_with(src_text, "fe80:"))
        rows = np.flatnonzero(gtp & ~link_local)
        if not len(rows):
            return out
        t = flows.take(pa.array(rows))
        # one owner per address family: a dual-stack UE has an IPv4 and an IPv6 address on one TEID
        family = pc.if_else(pc.match_substring(t.column("src_ip"), ":"), "6", "4")
        key = pc.binary_join_element_wise(pc.fill_null(t.column("tunnel_dst_ip"), ""),
                                          t.column("teid").cast(pa.string()), family, "|")
        codes = pc.dictionary_encode(key).combine_chunks().indices.to_numpy(zero_copy_only=False)
        src = pc.dictionary_encode(t.column("src_ip")).combine_chunks().indices.to_numpy(zero_copy_only=False)
        dst = pc.dictionary_encode(t.column("dst_ip")).combine_chunks().indices.to_numpy(zero_copy_only=False)
        n_codes = int(codes.max()) + 1
        sources = np.bincount(unique(codes * (int(src.max()) + 1) + src) // (int(src.max()) + 1), minlength=n_codes)
        targets = np.bincount(unique(codes * (int(dst.max()) + 1) + dst) // (int(dst.max()) + 1), minlength=n_codes)
        # one UE's TEID (one source), or a downlink TEID (many sources, one destination): not judged
        for c in np.flatnonzero((sources >= 2) & (targets >= 2)):  # the few TEIDs with a second source
            mine = np.flatnonzero(codes == c)
            # the UE: the source of most flows (ties: the earliest, rows are in time order)
            counts = np.bincount(src[mine])
            owner = src[mine][np.argmax(counts[src[mine]] == counts.max())]
            out[rows[mine[src[mine] != owner]]] = True
        return out
