"""Bidirectional flows from packet batches, in streaming order.

Key: the inner 5-tuple (ordered so both directions meet), the VLAN id, the
tunnel type and the unordered pair of outer tunnel endpoints.  GTP-U TEIDs are
per direction (the uplink TEID is the UPF's, the downlink TEID the gNB's), so
they are not part of the key — keying on them would split every bidirectional
user-plane flow in two; both TEIDs are kept as flow columns instead.

A flow ends when it has been idle for ``idle_timeout_s`` (a gap of at least
that long, in whole milliseconds as nfstream counts), when it has lasted
``active_timeout_s``, or — TCP only — when a bare SYN arrives after the flow
saw a RST or FINs both ways (port reuse), or — when the table holds more than
``max_flows`` after a batch — when it is among the least recently seen and is
evicted (a flood of spoofed sources must not take the sensor's memory; the
eviction point depends on batch boundaries).  Everything is computed per batch
with numpy; state carried between batches makes any batching give the same
flows as one big batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from detection.flows.export import build_flow_batch, flow_ids
from detection.flows.keys import PacketKeys, keys_of
from detection.flows.partial import (
    ACK,
    FIN,
    RST,
    SYN,
    KeyedPacketsMissing,
    PartialFlows,
    count_before,
    segment_partials,
    splits_inside,
)
from detection.flows.schema import FLOW_SCHEMA, SPLT_PACKETS, TCP_FLAGS
from detection.flows.state import FlowState
from detection.grouping import group_by_hash, run_starts
from sensors.schema import empty_table

REASON_IDLE, REASON_ACTIVE, REASON_REUSE, REASON_END, REASON_EVICTED = 1, 2, 3, 4, 5
#: default size limit of the flow table (~5 KB per flow with its features: ~2.5 GB)
MAX_FLOWS = 500_000
#: an eviction makes room for this share of max_flows, so a flood does not evict on every batch
EVICT_TO = 0.9


class FlowAssembler:
    """Streaming flow table: ``update(packets)`` returns flows that ended, by first seen and flow id.

    Ended flows are handed out in tables of at least ``export_rows`` (and all of
    them by ``flush``): building a table costs a fixed amount per column.
    """

    def __init__(self, idle_timeout_s: float = 120.0, active_timeout_s: float = 1800.0,
                 export_rows: int = 8192, max_flows: int = MAX_FLOWS) -> None:
        if idle_timeout_s <= 0 or active_timeout_s <= 0:
            raise ValueError("flow timeouts must be positive")
        if max_flows < 0:
            raise ValueError("max_flows must be >= 0 (0: no limit)")
        self.max_flows = max_flows
        self.flows_evicted = 0
        self.idle_timeout_s = idle_timeout_s
        self.active_timeout_s = active_timeout_s
        self._idle_ms = int(round(idle_timeout_s * 1000))
        self._active_ms = int(round(active_timeout_s * 1000))
        self._state = FlowState()
        self._slot_of: dict[int, int] = {}
        self._clock_ns = np.iinfo(np.int64).min
        self._export_rows = export_rows
        self._ended: list[tuple[np.ndarray, np.ndarray]] = []  # ended, not yet exported
        self._ended_count = 0
        self.flows_exported = 0
        self.last_flow_ids = np.empty(0, dtype=np.int64)

    @property
    def clock_ns(self) -> int | None:
        """The time the packets reached (forced order), None before the first."""
        return None if self._clock_ns == np.iinfo(np.int64).min else self._clock_ns

    @property
    def active_flows(self) -> int:
        return len(self._slot_of)

    def update(self, packets: pa.RecordBatch | pa.Table, id_rows: np.ndarray | None = None,
               now_ns: int | None = None, partials: PartialFlows | pa.RecordBatch | pa.Table | None = None
               ) -> pa.Table:
        """Add a packet batch (or keyed-packet batch); return the flows that ended (possibly empty).

        ``id_rows``: rows of the batch whose flow ids :attr:`last_flow_ids`
        should give afterwards (-1 for packets that belong to no flow).
        ``now_ns``: the time reached by the whole stream when this table holds only
        a share of its flows (one partition's): idle flows expire by it.
        ``partials``: the batch's partial flows (:func:`detection.flows.partial.partial_flows`, computed
        where it was decoded): merged as they are where they simply continue flows (the same flows, faster).
        Raises :class:`~detection.flows.partial.KeyedPacketsMissing`, having changed nothing, when they came
        with a thin keyed table (:func:`~detection.flows.partial.thin`) that lacks packets this batch needs.
        """
        k = keys_of(packets)
        done: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_flow_ids = np.full(0 if id_rows is None else len(id_rows), -1, dtype=np.int64)
        p = None if partials is None else partials if isinstance(partials, PartialFlows) else \
            PartialFlows.from_arrow(partials)
        if len(k.rows) and p is not None and int(k.ts_ns[0]) >= self._clock_ns:
            # the batch's own forced order is the table's: nothing earlier reached a later time
            done.extend(self._absorb_partials(p, k, id_rows))
            self._clock_ns = max(self._clock_ns, int(p["last_ns"].max()))
        elif len(k.rows):
            if p is not None and not p["keyed_all"].all():
                raise KeyedPacketsMissing("the batch is earlier than the flow table's clock")
            t_ns = np.maximum.accumulate(np.maximum(k.ts_ns, self._clock_ns))  # forced time order
            self._clock_ns = int(t_ns[-1])
            done.extend(self._absorb(k, t_ns, id_rows))
        if now_ns is not None:
            self._clock_ns = max(self._clock_ns, now_ns)
        done.append(self._expire_idle())
        self._retire(done)
        if self.max_flows and len(self._slot_of) > self.max_flows:
            self._retire([self._evict()])
        return self._export() if self._ended_count >= self._export_rows else empty_table(FLOW_SCHEMA)

    def flush(self) -> pa.Table:
        """End of input: every remaining flow."""
        slots = np.array(sorted(self._slot_of.values()), dtype=np.int64)
        self._retire([(slots, np.full(len(slots), REASON_END, dtype=np.int8))])
        return self._export()

    def restart(self) -> pa.Table:
        """A new timeline begins (an input that starts earlier than the time reached): every flow ends as at
        the end of input, and the clock starts again from the next packets."""
        flows = self.flush()
        self._clock_ns = np.iinfo(np.int64).min
        return flows

    # -- internals --
    def _expire_idle(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._slot_of:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int8)
        now_ms = self._clock_ns // 1_000_000
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        idle = slots[now_ms - self._state["last_ms"][slots] >= self._idle_ms]
        return idle, np.full(len(idle), REASON_IDLE, dtype=np.int8)

    def _evict(self) -> tuple[np.ndarray, np.ndarray]:
        """The least recently seen flows beyond :data:`EVICT_TO` of the limit."""
        slots = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        count = len(slots) - int(self.max_flows * EVICT_TO)
        # ties by key hash, so the choice does not depend on the order flows entered the table
        oldest = slots[np.lexsort((self._state["hash"][slots], self._state["last_ms"][slots]))[:count]]
        self.flows_evicted += len(oldest)
        return oldest, np.full(len(oldest), REASON_EVICTED, dtype=np.int8)

    def _retire(self, done: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Ended flows leave the key index at once (the key's next packet starts a new flow)."""
        for slots, reasons in done:
            if not len(slots):
                continue
            for h, slot in zip(self._state["hash"][slots].tolist(), slots.tolist()):
                if self._slot_of.get(h) == slot:  # not replaced by a newer flow of the same key
                    del self._slot_of[h]
            self._ended.append((slots, reasons))
            self._ended_count += len(slots)

    def _export(self) -> pa.Table:
        if not self._ended_count:
            return empty_table(FLOW_SCHEMA)
        slots = np.concatenate([d[0] for d in self._ended])
        reasons = np.concatenate([d[1] for d in self._ended])
        self._ended, self._ended_count = [], 0
        # in the order flows are handed out downstream (first seen, then flow id): ordering slots here spares
        # the pipeline a sort of every column of the table
        first_ns = self._state["first_ns"][slots]
        order = np.lexsort((flow_ids(self._state["hash"][slots], first_ns), first_ns))
        slots, reasons = slots[order], reasons[order]
        batch = build_flow_batch(self._state, slots, reasons)
        self._state.release(slots)
        self.flows_exported += len(slots)
        return pa.Table.from_batches([batch])

    def _absorb_partials(self, p: PartialFlows, k: PacketKeys, id_rows: np.ndarray | None
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Merge the partial flows of keys whose packets continue one flow (or begin one, after the stored
        flow's idle end); the other keys' packets go the per-packet way (:meth:`_absorb`)."""
        st = self._state
        get = self._slot_of.get
        stored = np.array([get(x, -1) for x in p["hash"].tolist()], dtype=np.int64)
        exist = stored >= 0
        s = np.maximum(stored, 0)
        first_ms = p["first_ns"] // 1_000_000
        idle = exist & (first_ms - st["last_ms"][s] >= self._idle_ms)
        cont = exist & ~idle
        flow_first_ms = np.where(cont, st["first_ms"][s], first_ms)
        tcp_seen = (st["rst"][s] > 0) | (st["fin_s2d"][s] > 0) | (st["fin_d2s"][s] > 0)
        split = (splits_inside(p, self._idle_ms)
                 | (p["last_ns"] // 1_000_000 - flow_first_ms >= self._active_ms)
                 | (cont & p["syn_later"] & tcp_seen))
        if not p["keyed_all"][split].all():
            raise KeyedPacketsMissing("a flow reaches the active timeout inside the batch")
        # a bare SYN first on a closed stored flow ends it (as packet by packet: a reused port), and the packets
        # begin a new one
        closed = (st["rst"][s] > 0) | ((st["fin_s2d"][s] > 0) & (st["fin_d2s"][s] > 0))
        reopen = cont & p["syn_first"] & closed & ~split
        cont &= ~reopen
        whole = np.flatnonzero(~split)
        ended = [(stored[idle & ~split], np.full(int((idle & ~split).sum()), REASON_IDLE, dtype=np.int8)),
                 (stored[reopen], np.full(int(reopen.sum()), REASON_REUSE, dtype=np.int8))]
        split_keys = p["hash"][split]
        if len(whole) < len(p):
            p, stored, cont = p.take(whole), stored[whole], cont[whole]
        slots = stored.copy()
        fresh = np.flatnonzero(~cont)
        slots[fresh] = st.allocate(len(fresh))
        st.init_slots(slots[fresh], p, fresh)
        st.merge(slots, p, cont)
        self._slot_of.update(zip(p["hash"][fresh].tolist(), slots[fresh].tolist()))
        if id_rows is not None and len(id_rows) and len(p):
            pos = np.minimum(np.searchsorted(k.rows, id_rows), len(k.rows) - 1)
            h = k.hash[pos]
            at = np.minimum(np.searchsorted(p["hash"], h), len(p) - 1)
            mine = (k.rows[pos] == id_rows) & (p["hash"][at] == h)
            slot = slots[at[mine]]
            self.last_flow_ids[mine] = flow_ids(st["hash"][slot], st["first_ns"][slot])
        if len(split_keys):  # the keys whose packets may split a flow: packet by packet
            rows = np.flatnonzero(np.isin(k.hash, split_keys))
            ended.extend(self._absorb(k.subset(rows), np.maximum.accumulate(k.ts_ns)[rows], id_rows))
        return ended

    def _absorb(self, k: PacketKeys, t_ns: np.ndarray,  # noqa: C901
                id_rows: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        st = self._state
        order, h = group_by_hash(k.hash)  # groups by key, time order inside
        t = t_ns[order]
        t_ms = t // 1_000_000
        n = len(h)
        gstart = np.empty(n, dtype=bool)
        gstart[0] = True
        np.not_equal(h[1:], h[:-1], out=gstart[1:])
        gpos = np.flatnonzero(gstart)
        gid = np.cumsum(gstart) - 1
        uniq = h[gpos]
        get = self._slot_of.get
        gslot = np.array([get(x, -1) for x in uniq.tolist()], dtype=np.int64)
        gexist = gslot >= 0
        pslot = gslot[gid]  # existing slot of each packet's group (-1 if new)
        pexist = pslot >= 0
        flags = k.tcp_flags[order].astype(np.int64)
        fwd = k.fwd[order]

        # -- segmentation: where does a new flow start? --
        prev_ms = np.empty(n, dtype=np.int64)
        prev_ms[1:] = t_ms[:-1]
        prev_ms[gpos] = np.where(gexist, st["last_ms"][np.maximum(gslot, 0)], 0)
        reason = np.zeros(n, dtype=np.int8)  # why the flow before this packet ended
        split = (t_ms - prev_ms >= self._idle_ms) & ~(gstart & ~pexist)
        reason[split] = REASON_IDLE
        split |= gstart & ~pexist
        syn_only = (flags & (SYN | ACK)) == SYN
        is_rst = (flags & RST) != 0
        is_fin = (flags & FIN) != 0
        # direction bit relative to the flow is only known per segment: use the
        # canonical orientation for FIN bookkeeping (both ways = both values seen)
        fin_a = is_fin & fwd
        fin_b = is_fin & ~fwd
        st_flow_fwd = st["fwd"]
        for _ in range(64):
            seg_start = split | gstart
            spos = np.flatnonzero(seg_start)
            sid = np.cumsum(seg_start) - 1
            cont = ~split[spos] & pexist[spos]  # segment continues the stored flow
            cslot = np.where(cont, pslot[spos], 0)
            seg_first = np.where(cont, st["first_ms"][cslot], t_ms[spos])
            active = (t_ms - seg_first[sid] >= self._active_ms) & ~split
            # TCP state before each packet, within its segment (+ the stored flow's)
            before_rst = count_before(is_rst, spos, sid) + np.where(cont, st["rst"][cslot], 0)[sid]
            st_fin_a = np.where(st_flow_fwd[cslot], st["fin_s2d"][cslot], st["fin_d2s"][cslot])
            st_fin_b = np.where(st_flow_fwd[cslot], st["fin_d2s"][cslot], st["fin_s2d"][cslot])
            before_fa = count_before(fin_a, spos, sid) + np.where(cont, st_fin_a, 0)[sid]
            before_fb = count_before(fin_b, spos, sid) + np.where(cont, st_fin_b, 0)[sid]
            closed = (before_rst > 0) | ((before_fa > 0) & (before_fb > 0))
            reuse = closed & syn_only & ~split  # also the batch's first packet of a stored flow
            cand = np.flatnonzero(active | reuse)
            if not len(cand):
                break
            new = cand[run_starts(sid[cand])]  # each segment's first candidate (sid ascends)
            split[new] = True
            reason[new] = np.where(active[new], REASON_ACTIVE, REASON_REUSE)
        seg_start = split | gstart
        spos = np.flatnonzero(seg_start)
        sid = np.cumsum(seg_start) - 1
        nseg = len(spos)
        cont = ~split[spos] & pexist[spos]

        # -- slots: continuing segments keep theirs, the others get new ones --
        ended: list[tuple[np.ndarray, np.ndarray]] = []
        g_of_seg = gid[spos]
        replaced = spos[gstart[spos] & split[spos] & pexist[spos]]  # stored flow ended at its first packet
        if len(replaced):
            ended.append((pslot[replaced], reason[replaced]))
        seg_slot = np.empty(nseg, dtype=np.int64)
        seg_slot[cont] = pslot[spos[cont]]
        fresh = np.flatnonzero(~cont)
        seg_slot[fresh] = st.allocate(len(fresh))
        partials = segment_partials(k, order, t, spos, sid, h)
        st.init_slots(seg_slot[fresh], partials, fresh)
        st.merge(seg_slot, partials, cont)
        # a segment followed by another one of the same group has ended inside this batch
        last_of_group = np.ones(nseg, dtype=bool)
        last_of_group[:-1] = g_of_seg[1:] != g_of_seg[:-1]
        finished = np.flatnonzero(~last_of_group)
        if len(finished):
            ended.append((seg_slot[finished], reason[spos[finished + 1]]))
        # the group's last segment is the live flow for that key
        live = np.flatnonzero(last_of_group)
        self._slot_of.update(zip(uniq[g_of_seg[live]].tolist(), seg_slot[live].tolist()))
        if id_rows is not None and len(id_rows):
            pos = np.minimum(np.searchsorted(k.rows, id_rows), len(k.rows) - 1)
            keyed = k.rows[pos] == id_rows
            sorted_pos = np.empty(n, dtype=np.int64)
            sorted_pos[order] = np.arange(n)
            slot = seg_slot[sid[sorted_pos[pos[keyed]]]]
            self.last_flow_ids[keyed] = flow_ids(st["hash"][slot], st["first_ns"][slot])
        return ended


__all__ = ["FlowAssembler", "TCP_FLAGS", "SPLT_PACKETS"]
