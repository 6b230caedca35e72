"""GTP-U from an unexpected peer: user-plane tunnels to an endpoint from a node it never had.

A UPF's N3 interface talks to a fixed set of gNBs (and N9 to known UPFs); a G-PDU
from a new outer source is a rogue base station, a misrouted roaming partner or
an attacker injecting into the user plane.  The endpoint's peers are learned from
the baseline given to ``fit`` and during its first ``warmup_s`` of traffic; peers
in ``known_peers`` (the site's gNB and UPF ranges) are always expected.  New peers
are judged once per distinct (endpoint, peer) pair, so an alert names each one.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import FlowDetector, LruDict, gtpu_tunnelled
from detection.grouping import Groups
from detection.rules.compiler import in_networks
from sensors.masks import true_mask


class GtpuUnexpectedPeer(FlowDetector):
    """Per GTP-U endpoint (outer destination), the outer sources seen in its warm-up; later new ones are flagged."""

    rule_id = "e6b3f0d8-4a2c-4e9b-8d17-3c5a9f2e7b41"
    title = "GTP-U from an unexpected peer (new outer source for a tunnel endpoint)"
    description = ("G-PDUs to a GTP-U endpoint from an outer source address that was not among its peers in the "
                   "baseline or its warm-up: a rogue gNB or user-plane injection from outside the RAN.")
    level = "high"
    tags = ["fight.fgt5005", "fight.fgt1599.503", "attack.t1599", "liaowang.5g"]
    category = "Attempted Administrator Privilege Gain"
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "tunnel_type", "tunnel_src_ip", "tunnel_dst_ip"]
    group_by = ("tunnel_src_ip", "tunnel_dst_ip")

    def __init__(self, warmup_s: float = 3600.0, known_peers: tuple[str, ...] = (), window_s: float = 300.0) -> None:
        self.warmup_s = warmup_s
        self.known_peers = known_peers
        self.window_s = window_s

    def fit(self, flows: pa.Table) -> GtpuUnexpectedPeer:
        self.peers_: LruDict[tuple[str, str], None] = LruDict()
        self.since_ns_: LruDict[str, int] = LruDict()
        pairs = self._pairs(flows)
        if pairs is not None:
            for endpoint, peer, _ in pairs:
                self.peers_[(endpoint, peer)] = None
                self.since_ns_[endpoint] = -(1 << 62)  # learned from the baseline: warm already
        return self

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        if not hasattr(self, "peers_"):
            self.fit(flows.slice(0, 0))
        out = np.zeros(flows.num_rows, dtype=bool)
        pairs = self._pairs(flows)
        if pairs is None:
            return out
        warmup_ns = int(self.warmup_s * 1e9)
        new: set[tuple[str, str]] = set()
        for endpoint, peer, first_ns in pairs:  # in time order of each pair's first flow (few pairs)
            if (endpoint, peer) in self.peers_:
                continue
            since = self.since_ns_.setdefault(endpoint, first_ns)
            self.peers_[(endpoint, peer)] = None
            if first_ns - since >= warmup_ns:
                new.add((endpoint, peer))
        self.known_of_ = {e: sorted(p for (e2, p) in self.peers_ if e2 == e and (e2, p) not in new)
                          for e, _ in new}
        if new:
            key = pc.binary_join_element_wise(flows.column("tunnel_dst_ip"), flows.column("tunnel_src_ip"), "|")
            out = true_mask(pc.is_in(key, value_set=pa.array([f"{e}|{p}" for e, p in new])))
            out &= ~in_networks(flows.column("tunnel_src_ip"), self.known_peers)
        return out

    def select(self, flows: pa.Table | pa.RecordBatch) -> np.ndarray:
        return gtpu_tunnelled(flows)

    @staticmethod
    def _pairs(flows: pa.Table) -> list[tuple[str, str, int]] | None:
        """Distinct (endpoint, peer, first flow start ns) of the GTP-U flows, in time order."""
        t = flows.filter(pa.array(gtpu_tunnelled(flows)))
        if not t.num_rows:
            return None
        groups = Groups([t.column("tunnel_dst_ip"), t.column("tunnel_src_ip")])
        pairs = t.select(["tunnel_dst_ip", "tunnel_src_ip"]).take(pa.array(groups.first))
        firsts = pa.table({"e": pairs.column(0), "p": pairs.column(1),
                           "t_min": groups.min(t.column("first_seen").cast(pa.int64()).to_numpy())}).sort_by(
            [("t_min", "ascending"), ("e", "ascending"), ("p", "ascending")])
        return list(zip(firsts.column("e").to_pylist(), firsts.column("p").to_pylist(),
                        firsts.column("t_min").to_pylist()))

    def explain(self, flows: pa.Table) -> list[str | None]:
        peers = getattr(self, "known_of_", {})
        out: list[str | None] = []
        for e in pc.fill_null(flows.column("tunnel_dst_ip"), "").to_pylist():
            known = peers.get(e, [])
            out.append(f"{e}'s peers: {', '.join(known[:5])}{' ...' if len(known) > 5 else ''}" if known else None)
        return out
