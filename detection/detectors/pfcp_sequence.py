"""PFCP requests that do not belong to their node's sequence: a spoofed SMF (or UPF).

A PFCP entity numbers its requests from one running counter (TS 29.244 section
7.2.2.2: the sequence number identifies a request and its response), so the
requests a node sends to a peer carry increasing numbers with small gaps (the
numbers it used towards other peers).  An attacker who forges requests in that
node's name (session deletion or modification DoS, the 5G-Attacks dataset's
method) cannot see the counter and numbers its requests from its own: they land
far from the node's current value.

A node that restarts also starts a new counter.  Its new sequence is adopted when
an Association Setup Request passes between the two nodes, or when the new sequence ran
``adopt_after`` requests with none of the old sequence in between, arriving with the
node's usual IP TTL (a forger elsewhere in the network is a different number of
hops away; one on the same path is only caught while the node's own sequence runs).  PFCP requests are
control-plane volume (thousands per second at most), so state is kept per request
in Python.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import LruDict, PacketDetector
from detection.grouping import Groups
from sensors.masks import true_mask

SEQ_SPACE = 1 << 24
#: request message types (TS 29.244 table 7.3-1): node-related and session-related
REQUESTS = (1, 3, 5, 7, 9, 12, 14, 50, 52, 54, 56)
ASSOCIATION_SETUP_REQUEST = 5
NAMES = {1: "Heartbeat", 5: "Association Setup", 7: "Association Update", 9: "Association Release",
         12: "Node Report", 14: "Session Set Deletion", 50: "Session Establishment", 52: "Session Modification",
         54: "Session Deletion", 56: "Session Report"}


class PfcpSequenceSpoofing(PacketDetector):
    """Per sending node and peer, the running request sequence; requests far from it are flagged."""

    rule_id = "c4f1a3e2-7b58-4d0a-9e36-1f2b8c7d5a94"
    title = "PFCP request out of its node's sequence (spoofed SMF/UPF)"
    description = ("A PFCP request whose sequence number is far from the sending node's running sequence: "
                   "forged in that node's name, e.g. session deletion or modification to cut subscribers off.")
    level = "critical"
    tags = ["fight.fgt1498", "attack.t1498", "attack.t1557", "liaowang.5g"]
    category = "Attempted Denial of Service"
    columns: ClassVar[list[str]] = ["ts", "src_ip", "dst_ip", "ip_ttl", "pfcp_msg_type", "pfcp_seq"]
    group_by = ("src_ip", "dst_ip")

    def __init__(self, max_gap: int = 4096, reorder: int = 64, adopt_after: int = 4, window_s: float = 60.0) -> None:
        self.max_gap = max_gap
        self.reorder = reorder
        self.adopt_after = adopt_after
        self.window_s = window_s

    def select(self, packets: pa.Table | pa.RecordBatch) -> np.ndarray:
        msg = packets.column("pfcp_msg_type")
        seq = packets.column("pfcp_seq")
        hit = pc.and_(pc.is_in(msg, pa.array(REQUESTS, pa.uint8())), pc.is_valid(seq))
        return true_mask(hit)

    def evaluate(self, events: pa.Table) -> np.ndarray:
        if not hasattr(self, "nodes_"):
            self.nodes_: LruDict[tuple[str, str], list[int]] = LruDict()  # [last seq, ttl, other seq, its run]
        out = np.zeros(events.num_rows, dtype=bool)
        self.reasons_: list[str | None] = [None] * events.num_rows
        msg = events.column("pfcp_msg_type").to_numpy(zero_copy_only=False)
        groups = Groups([events.column("src_ip"), events.column("dst_ip")])
        if (msg == ASSOCIATION_SETUP_REQUEST).any() or len(self.nodes_) + len(groups) > self.nodes_.max_items:
            self._steps(events, np.arange(events.num_rows), out)  # associations (and evictions) touch other keys
            return out
        # a node pair whose requests all follow on from one another (the usual case) only moves its counter on;
        # the others are judged request by request
        seq = events.column("pfcp_seq").to_numpy(zero_copy_only=False).astype(np.int64)
        pairs = events.select(["src_ip", "dst_ip"]).take(pa.array(groups.first)).to_pylist()
        ends = np.append(groups.starts[1:], events.num_rows)
        last_row = {}
        for (start, end), pair in zip(zip(groups.starts.tolist(), ends.tolist()), pairs):
            rows = groups.rows[start:end]
            key = (pair["src_ip"], pair["dst_ip"])
            last_row[key] = int(rows[-1])
            state = self.nodes_.get(key)
            run = seq[rows]
            ahead = np.diff(run if state is None else np.append(state[0], run)) % SEQ_SPACE
            if (ahead <= self.max_gap).all():
                if state is None:
                    self.nodes_[key] = [int(run[-1]), events.column("ip_ttl")[int(rows[0])].as_py(), -1, 0]
                else:
                    state[0], state[3] = int(run[-1]), 0
            else:
                self._steps(events, rows, out)
        for key in sorted(last_row, key=last_row.__getitem__):  # most recently used last, as request by request
            self.nodes_.move_to_end(key)
        return out

    def _steps(self, events: pa.Table, rows: np.ndarray, out: np.ndarray) -> None:
        """Judge the requests ``rows`` one by one, in order."""
        cols = events.select(["src_ip", "dst_ip", "ip_ttl", "pfcp_msg_type", "pfcp_seq"]).take(pa.array(rows)).to_pydict()
        for i, src, dst, ttl, msg, seq in zip(rows.tolist(), *cols.values()):
            state = self.nodes_.get((src, dst))
            if msg == ASSOCIATION_SETUP_REQUEST:  # a new association: both ends may have restarted
                self.nodes_.pop((dst, src), None)
            if state is None or msg == ASSOCIATION_SETUP_REQUEST:
                self.nodes_[(src, dst)] = [seq, ttl, -1, 0]
                continue
            last, usual_ttl, alt, run = state
            ahead = (seq - last) % SEQ_SPACE
            if ahead <= self.max_gap or ahead >= SEQ_SPACE - self.reorder:  # next, retransmitted or reordered
                if ahead <= self.max_gap:
                    state[0] = seq
                state[3] = 0  # the node's own sequence goes on: the other one is not a restart
                continue
            # out of sequence: a forger, or a restarted node's new counter
            alt_ahead = (seq - alt) % SEQ_SPACE if alt >= 0 else SEQ_SPACE
            state[2], state[3] = seq, run + 1 if alt_ahead <= self.max_gap else 1
            if state[3] >= self.adopt_after and ttl == usual_ttl:  # ran on alone, same path: a restart
                self.nodes_[(src, dst)] = [seq, ttl, -1, 0]
                continue
            out[i] = True
            ttl_note = f", TTL {ttl} (node's usual {usual_ttl})" if ttl != usual_ttl else ""
            self.reasons_[i] = (f"{NAMES.get(msg, f'type {msg}')} Request seq {seq}, node's sequence at {last}"
                                f"{ttl_note}")

    def explain(self, events: pa.Table) -> list[str | None]:
        return [r for r in self.reasons_ if r is not None]
