"""Partial flows: the mergeable statistics of a run of one flow key's packets, without the flow table.

The flow table (:mod:`detection.flows.assembler`) keeps one process's state, and
most of its per-packet work needs none of it: counts, sums, extremes and
inter-arrival statistics of a key's packets can be computed where the packets
are decoded and merged later (:meth:`detection.flows.state.FlowState.merge`).
So the sensor stage sends, beside the keyed packets, one partial flow per key
of the batch (:func:`partial_flows`: ~2,000 rows for ~120,000 packets), with
what the table needs to tell whether those packets simply continue one flow:
the largest gap between them, and their TCP openings and closings.  The table
merges those rows; a key whose packets may split a flow (a gap as long as the
idle timeout, a flow reaching the active timeout, a port reused) goes the
per-packet way instead, from the keyed packets.  The table's own per-packet
path builds its segments' statistics with :func:`segment_partials` too, so
both ways give the same numbers.

Where the flow table can have a batch read again (a replay's pcap chunks), the
sensor stage sends only the keyed packets it may need (:func:`thin`): those of
the keys that may split by what the batch alone shows, and those of the
signalling messages.  A key whose split shows only against the stored flows
(the active timeout), or a batch earlier than the table's clock, makes the
table ask for the batch's every keyed packet (:class:`KeyedPacketsMissing`).

Directions are the packets' own orientation (index 0: ``fwd`` packets, the
canonical low endpoint sending); the flow's direction is its first packet's,
known only to the table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from detection.flows.community import CID_CHARS, community_id_chars
from detection.flows.keys import PacketKeys
from detection.flows.schema import SPLT_PACKETS, TCP_FLAG_BIT, TCP_FLAGS
from detection.grouping import group_by_hash, run_starts
from sensors.masks import one_chunk, present

SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01
DIR_FLAGS = ("syn", "fin", "rst")  # also counted per direction
FLAG_BIT_INDEX = np.array([TCP_FLAG_BIT[f] for f in TCP_FLAGS], dtype=np.intp)
DIR_BIT_INDEX = np.array([TCP_FLAG_BIT[f] for f in DIR_FLAGS], dtype=np.intp)

#: a flow's fields taken from its first packet: flow-state (and partial-flow) field -> PacketKeys attribute
FROM_FIRST_PACKET = {
    "src": "src", "dst": "dst", "sport": "src_port", "dport": "dst_port", "proto": "ip_proto",
    "ipver": "ip_version", "icmp_type": "icmp_type", "icmp_code": "icmp_code", "vlan": "vlan_id",
    "vlan_valid": "vlan_valid", "ttype": "tunnel_type", "tsrc": "tunnel_src", "tdst": "tunnel_dst",
}

#: name -> (trailing shape, dtype); per-direction pairs are by the packets' orientation (see the module)
PARTIAL_FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    "hash": ((), np.uint64),
    "fwd": ((), np.bool_),  # the first packet's orientation
    "first_ns": ((), np.int64),  # times in forced order (the running maximum of the batch's timestamps)
    "last_ns": ((), np.int64),
    "src": ((2,), np.uint64), "dst": ((2,), np.uint64), "tsrc": ((2,), np.uint64), "tdst": ((2,), np.uint64),
    "sport": ((), np.uint16), "dport": ((), np.uint16), "proto": ((), np.uint8), "ipver": ((), np.uint8),
    "icmp_type": ((), np.uint8), "icmp_code": ((), np.uint8), "vlan": ((), np.uint16), "vlan_valid": ((), np.bool_),
    "ttype": ((), np.uint8),
    "pkts": ((2,), np.int64),
    "bytes": ((2,), np.int64),
    "payload": ((2,), np.int64),
    "ps_sq": ((2,), np.float64),  # sum of squared frame lengths
    "ps_min": ((2,), np.float64),  # inf where none
    "ps_max": ((2,), np.float64),
    "dir_flags": ((2, len(DIR_FLAGS)), np.int64),
    "dir_first_ns": ((2,), np.int64),  # -1 where none
    "dir_last_ns": ((2,), np.int64),
    # inter-arrival times between these packets, ns: [orientation 0, orientation 1, both ways]
    "iat_n": ((3,), np.int64),
    "iat_sum": ((3,), np.float64),
    "iat_m2": ((3,), np.float64),  # sum of squared deviations from their mean
    "iat_min": ((3,), np.float64),
    "iat_max": ((3,), np.float64),
    "flags": ((len(TCP_FLAGS),), np.int64),
    "errors": ((), np.int64),  # packets with a decode error
    "splt_bytes": ((SPLT_PACKETS,), np.int32),  # the first packets' payload lengths ...
    "splt_dir": ((SPLT_PACKETS,), np.int8),  # ... and orientations
    "qfi": ((), np.uint8), "qfi_valid": ((), np.bool_),  # the first valid one
    "app": ((), np.uint8),  # the first application hint (0: none)
    "teid": ((2,), np.uint32), "teid_valid": ((2,), np.bool_),  # the first GTP-U TEID of each orientation
}
#: what the flow table checks before merging a key's partial flow (:func:`partial_flows` adds them)
CHECK_FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    "max_gap_ms": ((), np.int64),  # the largest gap between consecutive packets, whole ms as the idle timeout counts
    "syn_first": ((), np.bool_),  # the first is a bare SYN: it ends a closed stored flow, and they begin a new one
    "syn_later": ((), np.bool_),  # a bare SYN among the others: it may end a closed stored flow inside them
    "reuse": ((), np.bool_),  # a bare SYN after a RST or FINs both ways among them: a new flow begins inside
    "keyed_all": ((), np.bool_),  # the keyed table beside holds every one of the key's packets (see thin)
}
#: what each column means (``docs/schemas.md``); "each way": [the fwd packets', the others']
FIELD_DOCS = {
    "hash": "64-bit hash of the flow key", "fwd": "the first packet's source is the key's lower endpoint",
    "first_ns": "first packet's time, ns (the batch's forced order: running maximum)",
    "last_ns": "last packet's time, ns",
    **{name: f"the first packet's `{attr}` (keyed_packets)" for name, attr in FROM_FIRST_PACKET.items()},
    "pkts": "packets each way", "bytes": "frame bytes each way", "payload": "payload bytes each way",
    "ps_sq": "sum of squared frame lengths each way", "ps_min": "smallest frame each way (inf: none)",
    "ps_max": "largest frame each way (-inf: none)", "dir_flags": "SYN, FIN and RST packets each way",
    "dir_first_ns": "first packet's time each way (-1: none)", "dir_last_ns": "last packet's time each way (-1: none)",
    "iat_n": "inter-arrival times between these packets: each way, then both ways", "iat_sum": "their sum, ns",
    "iat_m2": "their squared deviations from their mean, summed", "iat_min": "the shortest, ns (inf: none)",
    "iat_max": "the longest, ns (-inf: none)", "flags": "packets with each TCP flag (flow schema order)",
    "errors": "packets with a decode error", "splt_bytes": "payload lengths of the first packets",
    "splt_dir": "their orientation (0: fwd)", "qfi": "first GTP-U QFI", "qfi_valid": "a QFI was seen",
    "app": "first application hint (app_proto; 0: none)", "teid": "first GTP-U TEID each way",
    "teid_valid": "a TEID was seen each way",
    "cid": "the first packet's Community ID v1, as its 30 characters (ASCII codes); null where the sensor left it "
           "to the flow table",
    "max_gap_ms": "largest gap between consecutive packets, whole ms",
    "syn_first": "the first packet is a bare SYN", "syn_later": "a bare SYN among the other packets",
    "reuse": "a bare SYN after a RST or FINs both ways among them",
    "keyed_all": "the keyed table beside holds every packet of the key (else only those the sensor stage kept: "
                 "see `thin`)", "server_name": "first server name (keyed_packets)",
}
#: the partial-flow table (one row per flow key of a packet batch), from the sensor stage to the flow table
PARTIAL_FLOW_SCHEMA = pa.schema(
    [(name, pa.list_(pa.from_numpy_dtype(dt), int(np.prod(shape))) if shape else pa.from_numpy_dtype(dt))
     for name, (shape, dt) in {**PARTIAL_FIELDS, **CHECK_FIELDS}.items()]
    + [("server_name", pa.string()), ("cid", pa.list_(pa.uint8(), CID_CHARS))],
    metadata={"liaowang.schema": "partial_flows", "liaowang.version": "2"})


class PartialFlows:
    """Rows of partial-flow statistics (``PARTIAL_FIELDS``, with ``CHECK_FIELDS`` from :func:`partial_flows`),
    as numpy arrays, the first server name of each (an Arrow string array) and, when computed, the Community ID
    of each one's first packet (``cid``: (rows, CID_CHARS) characters)."""

    def __init__(self, arrays: dict[str, np.ndarray], server_name: pa.Array, cid: np.ndarray | None = None) -> None:
        self.arrays = arrays
        self.server_name = server_name
        self.cid = cid

    @classmethod
    def empty(cls) -> PartialFlows:
        return cls({name: np.zeros((0, *shape), dt) for name, (shape, dt) in {**PARTIAL_FIELDS, **CHECK_FIELDS}.items()},
                   pa.nulls(0, pa.string()))

    def __len__(self) -> int:
        return len(self.arrays["hash"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def take(self, rows: np.ndarray) -> PartialFlows:
        return PartialFlows({name: a[rows] for name, a in self.arrays.items()},
                            self.server_name.take(pa.array(rows, pa.int64())),
                            None if self.cid is None else self.cid[rows])

    def to_arrow(self) -> pa.RecordBatch:
        """The ``PARTIAL_FLOW_SCHEMA`` table (numeric columns share the arrays' memory)."""
        cols: list[pa.Array] = []
        for f in PARTIAL_FLOW_SCHEMA:
            if f.name == "server_name":
                cols.append(self.server_name)
                continue
            if f.name == "cid":
                cols.append(pa.nulls(len(self), f.type) if self.cid is None else
                            pa.FixedSizeListArray.from_arrays(pa.array(self.cid.reshape(-1)), CID_CHARS))
                continue
            values = self.arrays[f.name]
            if values.ndim > 1:
                flat = pa.array(np.ascontiguousarray(values).reshape(-1))
                cols.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
            else:
                cols.append(pa.array(values, f.type))
        return pa.RecordBatch.from_arrays(cols, schema=PARTIAL_FLOW_SCHEMA)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table) -> PartialFlows:
        arrays = {}
        for name, (shape, _dt) in {**PARTIAL_FIELDS, **CHECK_FIELDS}.items():
            col = one_chunk(batch.column(name))
            if shape:
                col = col.flatten()
            arrays[name] = np.asarray(col.to_numpy(zero_copy_only=False)).reshape(-1, *shape)
        cid = one_chunk(batch.column("cid"))
        chars = None if cid.null_count else np.asarray(cid.flatten().to_numpy()).reshape(-1, CID_CHARS)
        return cls(arrays, one_chunk(batch.column("server_name")), chars)


def partial_flows(k: PacketKeys, community_ids: bool = True) -> PartialFlows:
    """A batch's keyed packets -> one partial flow per key (in hash order), with its ``CHECK_FIELDS``.

    Times are forced into order from the batch's own first packet on; the flow
    table uses the rows only if no earlier batch reached a later time.
    ``community_ids``: also each one's Community ID (one SHA-1 each), which the flow table would otherwise
    compute as it hands the flow out: worth it where the flow table's process sets the pace (with detection),
    not where the decoders do (a flow meter).
    """
    if not len(k.rows):
        return PartialFlows.empty()
    order, h = group_by_hash(k.hash)
    t = np.maximum.accumulate(k.ts_ns)[order]
    spos = run_starts(h)  # one segment per key
    sid = np.repeat(np.arange(len(spos)), np.diff(np.append(spos, len(h))))
    return segment_partials(k, order, t, spos, sid, h, checks=True, community_ids=community_ids)


def segment_partials(k: PacketKeys, order: np.ndarray, t: np.ndarray, spos: np.ndarray, sid: np.ndarray,
                     h: np.ndarray, checks: bool = False, community_ids: bool = False) -> PartialFlows:
    """The partial flows of segments of keyed packets (at least one): ``order`` sorts the packets by segment (time order
    inside), ``t`` and ``h`` are their times and key hashes in that order, ``spos`` where each segment starts
    and ``sid`` each packet's segment.  ``checks``: with ``CHECK_FIELDS``; ``community_ids``: with ``cid``."""
    n, nseg = len(order), len(spos)
    first = order[spos]
    seg_end = np.append(spos[1:], n) - 1
    fwd = k.fwd[order]
    p: dict[str, np.ndarray] = {"hash": h[spos], "fwd": k.fwd[first], "first_ns": t[spos], "last_ns": t[seg_end]}
    for name, attr in FROM_FIRST_PACKET.items():
        p[name] = getattr(k, attr)[first]
    cid = community_id_chars(p["src"], p["dst"], p["ipver"] == 4, p["proto"], p["sport"], p["dport"], p["icmp_type"],
                             p["icmp_code"]) if community_ids else None
    # -- per orientation: runs of equal (segment, orientation) once sorted by sid * 2 + orientation
    frame = k.frame_len[order].astype(np.float64)
    payload = k.payload_len[order]
    key2 = sid * 2 + ~fwd
    o2 = np.argsort(key2, kind="stable")
    k2, t2, fr2 = key2[o2], t[o2], frame[o2]
    runs = run_starts(k2)
    rs, rd = k2[runs] // 2, k2[runs] % 2

    def per_dir(values: np.ndarray, fill: float | int, dtype: type = np.float64) -> np.ndarray:
        out = np.full((nseg, 2, *values.shape[1:]), fill, dtype=dtype)
        out[rs, rd] = values
        return out

    sums = np.add.reduceat(np.stack([np.ones(n), fr2, payload[o2].astype(np.float64), fr2 * fr2], axis=1), runs)
    p["pkts"] = per_dir(sums[:, 0], 0, np.int64)
    p["bytes"] = per_dir(sums[:, 1], 0, np.int64)
    p["payload"] = per_dir(sums[:, 2], 0, np.int64)
    p["ps_sq"] = per_dir(sums[:, 3], 0.0)
    p["ps_min"] = per_dir(np.minimum.reduceat(fr2, runs), np.inf)
    p["ps_max"] = per_dir(np.maximum.reduceat(fr2, runs), -np.inf)
    flags = k.tcp_flags[order].astype(np.int64)
    p["dir_flags"] = per_dir(np.add.reduceat(_bits(flags[o2], DIR_BIT_INDEX), runs, dtype=np.int64), 0, np.int64)
    p["dir_first_ns"] = per_dir(t2[runs], -1, np.int64)
    p["dir_last_ns"] = per_dir(t2[np.append(runs[1:], n) - 1], -1, np.int64)
    iat = {"iat_n": np.zeros((nseg, 3), np.int64), "iat_sum": np.zeros((nseg, 3)), "iat_m2": np.zeros((nseg, 3)),
           "iat_min": np.full((nseg, 3), np.inf), "iat_max": np.full((nseg, 3), -np.inf)}
    for name, values in zip(iat, _run_iat(t2, runs)):
        iat[name][rs, rd] = values
    for name, values in zip(iat, _run_iat(t, spos)):
        iat[name][:, 2] = values
    p.update(iat)
    # -- per segment
    p["flags"] = np.add.reduceat(_bits(flags, FLAG_BIT_INDEX), spos, dtype=np.int64)
    p["errors"] = np.add.reduceat((k.decode_status[order] != 0).astype(np.int64), spos)
    rank = np.arange(n) - spos[sid]
    early = rank < SPLT_PACKETS
    p["splt_bytes"] = np.zeros((nseg, SPLT_PACKETS), np.int32)
    p["splt_dir"] = np.zeros((nseg, SPLT_PACKETS), np.int8)
    p["splt_bytes"][sid[early], rank[early]] = payload[early]
    p["splt_dir"][sid[early], rank[early]] = ~fwd[early]
    # the first value of the sparse attributes
    p["qfi"], p["qfi_valid"] = _first_value(sid, k.qfi[order], k.qfi_valid[order], nseg)
    app = k.app_proto[order]
    p["app"], _ = _first_value(sid, app, app != 0, nseg)
    p["teid"] = np.zeros((nseg, 2), k.teid.dtype)
    p["teid_valid"] = np.zeros((nseg, 2), bool)
    tv = k.teid_valid[order][o2]
    if tv.any():
        teid2 = k.teid[order][o2]
        for d in (0, 1):
            p["teid"][:, d], p["teid_valid"][:, d] = _first_value(k2 // 2, teid2, tv & (k2 % 2 == d), nseg)
    server = pa.nulls(nseg, pa.string())
    if k.server_name.null_count < len(k.server_name):  # most packets carry none
        pos = _first_per_run(sid, present(k.server_name)[order])
        rows = np.full(nseg, -1, np.int64)
        rows[sid[pos]] = order[pos]
        server = k.server_name.take(pa.array(rows, mask=rows < 0))
    if checks:
        p.update(_checks(k, order, t, spos, sid))
    return PartialFlows(p, server, cid)


def _checks(k: PacketKeys, order: np.ndarray, t: np.ndarray, spos: np.ndarray, sid: np.ndarray
            ) -> dict[str, np.ndarray]:
    n = len(order)
    t_ms = t // 1_000_000
    gap = np.zeros(n, np.int64)
    gap[1:] = t_ms[1:] - t_ms[:-1]
    gap[spos] = 0
    flags = k.tcp_flags[order]
    fwd = k.fwd[order]
    syn_only = (flags & (SYN | ACK)) == SYN
    is_rst, is_fin = (flags & RST) != 0, (flags & FIN) != 0
    closed = (count_before(is_rst, spos, sid) > 0) | (
        (count_before(is_fin & fwd, spos, sid) > 0) & (count_before(is_fin & ~fwd, spos, sid) > 0))
    syn_first = syn_only[spos]
    later = syn_only.copy()
    later[spos] = False
    return {"max_gap_ms": np.maximum.reduceat(gap, spos), "syn_first": syn_first,
            "syn_later": np.logical_or.reduceat(later, spos),
            "reuse": np.logical_or.reduceat(closed & syn_only, spos), "keyed_all": np.ones(len(spos), dtype=bool)}


def splits_inside(p: PartialFlows, idle_ms: int) -> np.ndarray:
    """The keys whose packets split a flow among themselves whatever the table holds: a port reused, or a gap as
    long as the idle timeout."""
    split: np.ndarray = p["reuse"] | (p["max_gap_ms"] >= idle_ms)
    return split


class KeyedPacketsMissing(Exception):
    """The flow table needs keyed packets that a thin keyed table (:func:`thin`) left out: give it the batch's
    every keyed packet."""


def thin(k: PacketKeys, p: PartialFlows, idle_ms: int, active_ms: int, keep_rows: np.ndarray
         ) -> tuple[PacketKeys, PartialFlows]:
    """The keyed packets a flow table with these timeouts may need beside the partial flows ``p`` of ``k``:
    every packet of the keys that may split a flow by what the batch shows (an idle gap, a batch as long as the
    active timeout, a reused port, a bare SYN after the first packet), the batch's first packet (its time
    decides whether the partial flows apply) and the packets at ``keep_rows`` (the signalling messages', whose
    flow ids are asked for).  Times are the batch's forced order (the running maximum), as the table would
    compute it from every packet.  ``keyed_all`` marks the keys whose packets are all there.

    Most packets simply continue their flows: a 1M-packet replay then moves ~2% of its keyed packets between
    processes (each batch's keyed table is ~14 MB in shared memory).
    """
    complete = (splits_inside(p, idle_ms) | p["syn_later"]
                | (p["last_ns"] // 1_000_000 - p["first_ns"] // 1_000_000 >= active_ms))
    p = PartialFlows({**p.arrays, "keyed_all": complete}, p.server_name, p.cid)
    keep = np.isin(k.hash, p["hash"][complete])
    keep[:1] = True
    if len(k.rows):  # a row that is no keyed packet's (a later fragment) keeps a neighbour: harmless
        keep[np.minimum(np.searchsorted(k.rows, keep_rows), len(k.rows) - 1)] = True
    rows = np.flatnonzero(keep)
    t_ns = np.maximum.accumulate(k.ts_ns)
    sub = k.subset(rows)
    sub.ts_ns = t_ns[rows]
    return sub, p


def count_before(flag: np.ndarray, spos: np.ndarray, sid: np.ndarray) -> np.ndarray:
    """For each packet: how many earlier packets of its segment have ``flag``."""
    c = np.cumsum(flag, dtype=np.int64) - flag
    return c - c[spos][sid]


def _bits(flags: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(packets, len(index)) 0/1 bytes: the TCP flag bits ``index`` of each packet (one unpack, not a
    compare per flag)."""
    return np.unpackbits(flags.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, index]


def _first_per_run(run_id: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Position of the first valid element of each run (``run_id`` sorted ascending)."""
    pos = np.flatnonzero(valid)
    return pos[run_starts(run_id[pos])]


def _first_value(run_id: np.ndarray, values: np.ndarray, valid: np.ndarray, runs: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(the first valid value of each run (0 where none), whether it has one)."""
    pos = _first_per_run(run_id, valid)
    out, has = np.zeros(runs, values.dtype), np.zeros(runs, bool)
    out[run_id[pos]] = values[pos]
    has[run_id[pos]] = True
    return out, has


def _run_iat(t: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per run of ``t``: count, sum, squared deviations, min and max of the gaps between its values."""
    has = np.ones(len(t), dtype=bool)
    has[runs] = False
    d = np.zeros(len(t))
    d[1:] = t[1:] - t[:-1]
    d[runs] = 0.0
    n_b = np.add.reduceat(has.astype(np.float64), runs)
    sum_b = np.add.reduceat(d, runs)
    mean = sum_b / np.maximum(n_b, 1)
    lengths = np.diff(np.append(runs, len(t)))
    dev = np.where(has, d - np.repeat(mean, lengths), 0.0)
    m2_b = np.add.reduceat(dev * dev, runs)
    min_b = np.minimum.reduceat(np.where(has, d, np.inf), runs)
    max_b = np.maximum.reduceat(np.where(has, d, -np.inf), runs)
    return n_b.astype(np.int64), sum_b, m2_b, min_b, max_b
