"""Stateful stage: hits -> counts over time windows -> alert episodes.

Every rule is an aggregation (a rule without one counts its events per source
and destination address, threshold 1).  Windows of ``window_s`` hop by half
a window, so a burst shorter than half a window is never split across two
windows.  Hits are pre-aggregated per half-window bucket on arrival (memory
follows distinct groups, not events), and a window is evaluated once, when
the event time (the largest seen, less ``lateness_s``) has passed its end:
any batching of the same hits gives the same alerts.  Consecutive firing
windows of one rule and group form one episode, which becomes one alert with
its event count, first and last time, so repeats do not flood the analyst.

**Early warnings**: the final alert waits for its episode to close, but a
count only grows, so a window whose count already reaches the threshold will
fire.  ``warnings`` are the episodes that just crossed it, as far as they go:
the same rule, group and first window (hence the same alert id) as the alert
to come, announced in the batch whose events made the crossing.  Each
(rule, group) is announced once per episode.  They depend on batching (when
the crossing is seen); alerts do not.

The partial counts are capped (``max_rows``): a flood of spoofed sources makes
a group per source, each with a count of one.  Beyond the cap the lightest
groups (fewest events, then the least recent) are shed until a quarter of the
room is free, and counted in ``shed_groups`` / ``shed_events``: a group that
would have fired is heavy, so it stays.  Below the cap nothing changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.grouping import Groups, key_parts
from detection.rules.hits import TUPLE_FIELDS
from detection.rules.model import Rule

TUPLE = [f.name for f in TUPLE_FIELDS]
NEVER = -(1 << 62)
#: a partial's (rule, group) as one integer: rule << GROUP_BITS | the group's code
GROUP_BITS = 40
#: partial-count rows one counter holds at most (~140 bytes each, a few times that while merging)
MAX_PARTIAL_ROWS = 200_000


@dataclass
class Episode:
    """Consecutive firing windows of one rule and group: one alert."""

    rule: int
    group: str
    first_window: int  # bucket index of the first firing window
    last_window: int
    first_ts: int
    last_ts: int
    events: int = 0
    peak: int = 0
    windows: int = 0
    counted: set[int] = field(default_factory=set)  # buckets whose events are in ``events``
    first: dict[str, Any] = field(default_factory=dict)  # the 5-tuple of the first event
    samples: list[int] = field(default_factory=list)  # flow ids, when the source is flows

    def alert_id(self, rule_id: str, hop_ns: int) -> str:
        key = f"{rule_id}|{self.group}|{self.first_window * hop_ns}".encode()
        return hashlib.blake2b(key, digest_size=10).hexdigest()


@dataclass
class Windows:
    """The windows to evaluate: ``rows`` of ``partials`` (a row repeats for each window it feeds) and each
    one's ``window``."""

    partials: pa.Table
    rows: np.ndarray
    window: np.ndarray


class WindowCounter:
    """Counts hits of many rules per group and window; ``update(hits)`` / ``flush()`` -> closed episodes."""

    def __init__(self, rules: list[Rule], lateness_s: float = 5.0, max_rows: int = MAX_PARTIAL_ROWS) -> None:
        self.rules = rules
        self.hop_ns = np.array([r.aggregate.hop_ns for r in rules] or [1], dtype=np.int64)
        self.threshold = np.array([r.aggregate.threshold for r in rules] or [1], dtype=np.int64)
        self.distinct = np.array([r.aggregate.function == "distinct_count" for r in rules] or [False])
        self.lateness_ns = int(lateness_s * 1e9)
        self.done = np.full(max(len(rules), 1), NEVER, dtype=np.int64)  # last evaluated window, per rule
        self.watermark = NEVER
        self.partials: pa.Table | None = None
        self.open: dict[tuple[int, str], Episode] = {}
        self.late_events = 0
        self.max_rows = max_rows  # 0: no limit
        self.shed_groups = 0
        self.shed_events = 0
        self.warned: set[tuple[int, str]] = set()  # (rule, group) announced early, until its episode closes
        self.warnings: list[Episode] = []  # announced since the caller last took them
        self._hit_keys = np.empty(0, dtype=np.int64)  # the last hits' gkeys (see _keyed)
        self._reach_of: pa.Table | None = None  # the partials that _reach is for (see _reachable)
        self._reach = np.empty(0, dtype=bool)
        self._reach_groups = (self._hit_keys, self._hit_keys, self._reach)  # its (rule, group)s, rows' group, theirs

    def update(self, hits: pa.RecordBatch | pa.Table, watermark_ns: int | None = None) -> list[Episode]:
        """Add hits; ``watermark_ns`` is the event time reached by the input (default: the latest hit)."""
        late: list[Episode] = []
        if hits.num_rows:
            late = self._absorb(hits)
        if watermark_ns is not None:
            self.watermark = max(self.watermark, watermark_ns)
        elif hits.num_rows:
            self.watermark = max(self.watermark, int(pc.max(hits.column("last_ts")).as_py()))
        if hits.num_rows:  # before the windows are evaluated: an episode they open is announced too
            self._warn({(e.rule, e.group) for e in late})
        closed = late + self._advance(self.watermark - self.lateness_ns)
        for e in closed:
            self.warned.discard((e.rule, e.group))
        return closed

    def take_warnings(self) -> list[Episode]:
        """The early warnings since the last call (see the module's doc)."""
        out, self.warnings = self.warnings, []
        return out

    def _warn(self, done: set[tuple[int, str]]) -> None:
        """Announce the (rule, group)s the last hits touched whose open windows now reach the threshold."""
        if self.partials is None or not self.partials.num_rows:
            return
        p = self.partials
        if not self._reachable(p).any():
            return
        pairs, inverse, reachable = self._reach_groups
        # the (rule, group)s the hits touched, among the partials' (a shed or late hit's may be missing)
        at = np.minimum(np.searchsorted(pairs, self._hit_keys), len(pairs) - 1)
        touched = np.zeros(len(pairs), dtype=bool)
        touched[at[pairs[at] == self._hit_keys]] = True
        mine_rows = (reachable & touched)[inverse]
        if not mine_rows.any():
            return
        mine = p.filter(pa.array(mine_rows))
        found = self._windows(mine, self.done, np.full_like(self.done, 1 << 61))
        if found is None:
            return
        fired = self._fired(found)
        if not fired.num_rows:
            return
        keys = list(zip(fired.column("rule").to_pylist(), fired.column("group").to_pylist()))
        new = np.array([(k not in self.warned and k not in self.open and k not in done) for k in keys])
        if not new.any():
            return
        scratch: dict[tuple[int, str], Episode] = {}
        split = self._episodes(fired.filter(pa.array(new)), mine, found.rows, scratch)
        for e in sorted(split + list(scratch.values()), key=lambda e: (e.first_window, e.rule, e.group)):
            if (e.rule, e.group) not in self.warned:  # the first episode of a group, if its windows split
                self.warned.add((e.rule, e.group))
                self.warnings.append(e)

    def _reachable(self, p: pa.Table) -> np.ndarray:
        """The partials' rows whose (rule, group) may fire: a group's windows count at most its partials' events
        (a distinct count: at most its rows), so only groups whose events reach their rule's threshold can;
        usually none, and the windows of the rest need not be counted.  Kept for the table it was found for."""
        if self._reach_of is not p:
            pairs, inverse = np.unique(p.column("gkey").to_numpy(), return_inverse=True)
            events = np.bincount(inverse, weights=np.maximum(p.column("n").to_numpy(zero_copy_only=False), 1))
            reachable = events >= self.threshold[pairs >> GROUP_BITS]
            self._reach_groups = (pairs, inverse, reachable)
            self._reach = reachable[inverse]
            self._reach_of = p
        return self._reach

    def reset(self) -> None:
        """Forget the event time reached (after ``flush``): the next hits start a new timeline."""
        self.done[:] = NEVER
        self.watermark = NEVER
        self.partials = None
        self.open.clear()
        self.warned.clear()

    def flush(self) -> list[Episode]:
        closed = self._advance(1 << 62)
        closed.extend(self.open.values())
        self.open.clear()
        self.warned.clear()
        return sorted(closed, key=lambda e: (e.first_ts, e.rule, e.group))

    # -- internals ------------------------------------------------------------------

    def _absorb(self, hits: pa.RecordBatch | pa.Table) -> list[Episode]:
        """Add hits to the open buckets; late ones (their windows are evaluated) are counted on their own.

        Late hits happen when a replay's files overlap in time (a long capture and
        a short one inside its span): they form episodes of their own, right away.
        """
        hits = pa.Table.from_batches([hits]) if isinstance(hits, pa.RecordBatch) else hits
        rule = hits.column("rule").to_numpy(zero_copy_only=False).astype(np.int64)
        late = hits.column("bucket").to_numpy(zero_copy_only=False) <= self.done[rule]
        episodes: list[Episode] = []
        if late.any():
            self.late_events += int(late.sum())
            partials = _combine(_keyed(hits.filter(pa.array(late))))
            found = self._windows(partials, np.full_like(self.done, NEVER), np.full_like(self.done, 1 << 61))
            if found is not None:
                own: dict[tuple[int, str], Episode] = {}
                episodes = self._episodes(self._fired(found), partials, found.rows, own) + list(own.values())
            hits = hits.filter(pa.array(~late))
        held = [] if self.partials is None else [self.partials.drop_columns(["gkey", "vkey"])]
        table = _keyed(pa.concat_tables([*held, hits]))
        self._hit_keys = table.column("gkey").to_numpy()[table.num_rows - hits.num_rows:]
        self.partials = self._shed(_combine(table))
        return episodes

    def _shed(self, p: pa.Table) -> pa.Table:
        """Keep the heaviest groups when the partials outgrow ``max_rows`` (see the module's doc)."""
        if not self.max_rows or p.num_rows <= self.max_rows:
            return p
        key = p.column("gkey").to_numpy()
        groups = Groups([], parts=[key])
        n_sum, last = groups.sum(p.column("n").to_numpy()), groups.max(p.column("last_ts").to_numpy())
        heaviest = np.lexsort((key[groups.first], -last, -n_sum))  # most events, then most recent, then key
        rows = np.cumsum(groups.count()[heaviest])
        kept = int(np.searchsorted(rows, self.max_rows * 3 // 4, side="right"))
        self.shed_groups += len(groups) - kept
        self.shed_events += int(n_sum[heaviest[kept:]].sum())
        return p.filter(pa.array(np.isin(key, key[groups.first][heaviest[:kept]])))

    def _advance(self, event_time_ns: int) -> list[Episode]:
        """Evaluate every window that ended before ``event_time_ns``; return the episodes that can grow no more."""
        if not self.rules:
            return []
        final = event_time_ns >= (1 << 62)
        # window b covers buckets b and b+1: evaluable once bucket b+1 is complete
        last_window = np.full_like(self.done, 1 << 61) if final else event_time_ns // self.hop_ns - 2
        closed: list[Episode] = []
        p = self.partials
        if p is not None:
            found = self._windows(p, self.done, last_window)
            if found is not None:
                reachable = self._reachable(p)[found.rows]
                if reachable.any():
                    found = Windows(p, found.rows[reachable], found.window[reachable])
                    closed = self._episodes(self._fired(found), p, found.rows, self.open)
        if final:
            self.partials = None
            return closed
        self.done = np.maximum(self.done, last_window)
        if p is not None:  # drop the buckets no window needs any more
            rule = p.column("rule").to_numpy(zero_copy_only=False).astype(np.int64)
            keep = p.column("bucket").to_numpy() > self.done[rule]
            self.partials = p if keep.all() else p.filter(pa.array(keep))
        for key, ep in list(self.open.items()):
            if self.done[ep.rule] >= ep.last_window + 2:  # the next windows did not continue it
                closed.append(self.open.pop(key))
        return closed

    def _windows(self, p: pa.Table, after: np.ndarray, upto: np.ndarray) -> Windows | None:
        """The partials' rows once per window they feed, for windows in (after, upto] of their rule."""
        rule = p.column("rule").to_numpy(zero_copy_only=False).astype(np.int64)
        bucket = p.column("bucket").to_numpy()
        rows, starts = [], []
        for shift in (1, 0):  # bucket k feeds windows k-1 and k
            w = bucket - shift
            ok = (w > after[rule]) & (w <= upto[rule])
            rows.append(np.flatnonzero(ok))
            starts.append(w[ok])
        take = np.concatenate(rows)
        if not len(take):
            return None
        return Windows(p, take, np.concatenate(starts))

    def _fired(self, found: Windows) -> pa.Table:
        """The windows whose count (or distinct count) reaches their rule's threshold: rule, group, gkey, window,
        metric, sorted by rule, group and window."""
        p, rows = found.partials, found.rows
        gkey = p.column("gkey").to_numpy()[rows]
        groups = Groups([], parts=[gkey, found.window])
        first = groups.first
        rule = gkey[first] >> GROUP_BITS
        metric = groups.sum(p.column("n").to_numpy()[rows])
        distinct = self.distinct[rule]
        if distinct.any():
            metric = np.where(distinct, groups.count_distinct_codes(p.column("vkey").to_numpy()[rows]), metric)
        ok = np.flatnonzero(metric >= self.threshold[rule])
        fired = p.select(["rule", "group", "gkey"]).take(pa.array(rows[first[ok]]))
        fired = fired.append_column("window", pa.array(found.window[first[ok]])).append_column(
            "metric", pa.array(metric[ok].astype(np.int64)))
        return fired.sort_by([("rule", "ascending"), ("group", "ascending"), ("window", "ascending")])

    def _episodes(self, fired: pa.Table, partials: pa.Table, rows: np.ndarray,
                  open_: dict[tuple[int, str], Episode]) -> list[Episode]:
        """Fold firing windows into episodes; ``rows``: the partials of the evaluated windows (repeats allowed)."""
        if not fired.num_rows:
            return []
        seen = np.zeros(partials.num_rows, dtype=bool)
        seen[rows] = True
        used = np.flatnonzero(seen)  # np.unique(rows), without its sort
        # the buckets of firing windows, with their events and first 5-tuple
        mine = used[np.isin(partials.column("gkey").to_numpy()[used], fired.column("gkey").to_numpy())]
        mine_rows = partials.take(pa.array(mine))
        groups = Groups([], parts=[mine_rows.column("gkey").to_numpy(), mine_rows.column("bucket").to_numpy()])
        per_bucket = mine_rows.select(["rule", "group", "bucket"]).take(pa.array(groups.first))
        for name, values in (("n_sum", groups.sum(mine_rows.column("n").to_numpy())),
                             ("first_ts_min", groups.min(mine_rows.column("first_ts").to_numpy())),
                             ("last_ts_max", groups.max(mine_rows.column("last_ts").to_numpy()))):
            per_bucket = per_bucket.append_column(name, pa.array(values))
        for c in TUPLE:
            per_bucket = per_bucket.append_column(f"{c}_first", groups.first_valid(mine_rows.column(c)))
        buckets: dict[tuple[int, str, int], dict[str, Any]] = {
            (r["rule"], r["group"], r["bucket"]): r for r in per_bucket.to_pylist()}
        closed = []
        for row in fired.to_pylist():
            r, g, w = row["rule"], row["group"], row["window"]
            ep = open_.get((r, g))
            if ep is not None and w > ep.last_window + 2:  # a quiet window between: a new episode
                closed.append(open_.pop((r, g)))
                ep = None
            if ep is None:
                ep = Episode(rule=r, group=g, first_window=w, last_window=w, first_ts=1 << 62, last_ts=NEVER)
                open_[(r, g)] = ep
            ep.last_window, ep.windows, ep.peak = w, ep.windows + 1, max(ep.peak, row["metric"])
            for b in (w, w + 1):
                info = buckets.get((r, g, b))
                if info is None or b in ep.counted:
                    continue
                ep.counted.add(b)
                ep.events += info["n_sum"]
                if info["first_ts_min"] < ep.first_ts:
                    ep.first_ts = info["first_ts_min"]
                    ep.first = {c: info[f"{c}_first"] for c in TUPLE}
                ep.last_ts = max(ep.last_ts, info["last_ts_max"])
                fid = info["flow_id_first"]
                if fid is not None and len(ep.samples) < 5 and fid not in ep.samples:
                    ep.samples.append(fid)
        return closed


def _keyed(t: pa.Table) -> pa.Table:
    """Hits or partials with integer keys for their (rule, group) (``gkey``) and their value (``vkey``, -1 for
    none), valid among the table's own rows: every grouping here is then on integers, not text."""
    rule = t.column("rule").to_numpy(zero_copy_only=False).astype(np.int64)
    # a text column's key part is its dictionary code, -1 for null
    return t.append_column("gkey", pa.array(rule << GROUP_BITS | key_parts(t.column("group"))[-1])).append_column(
        "vkey", pa.array(key_parts(t.column("value"))[-1]))


def _combine(t: pa.Table) -> pa.Table:
    """Merge partial aggregates with the same rule, group, bucket and value (the earliest 5-tuple kept).

    Sorted first, so the kept 5-tuple does not depend on arrival order (flows
    arrive in the order they end, which depends on batching); the sort is stable.
    """
    order = pc.sort_indices(t, [("first_ts", "ascending"), ("flow_id", "ascending")]).to_numpy()  # stable
    rank = np.empty(t.num_rows, dtype=np.int64)
    rank[order] = np.arange(t.num_rows)
    # each group's earliest row by its rank, then the groups in that order and their 5-tuples in one take
    groups = Groups([], parts=[t.column(k).to_numpy() for k in ("gkey", "bucket", "vkey")])
    earliest = groups.min(rank)
    by_time = np.argsort(earliest)
    first = t.take(pa.array(order[earliest[by_time]]))
    return pa.table({**{k: first.column(k) for k in ("rule", "group", "bucket", "value")},
                     "n": pa.array(groups.sum(t.column("n").to_numpy())[by_time]),
                     "first_ts": first.column("first_ts"),
                     "last_ts": pa.array(groups.max(t.column("last_ts").to_numpy())[by_time]),
                     **{c: first.column(c) for c in TUPLE}, "gkey": first.column("gkey"), "vkey": first.column("vkey")})


__all__ = ["Episode", "WindowCounter"]
