"""Stateful detectors: what a rule's selection cannot say (periodicity, who owns a TEID,
whether a host was ever seen, which node's sequence a request belongs to), evaluated
per closed time window.

Two kinds, alike in shape:

- a :class:`FlowDetector` reads exported flows;
- a :class:`PacketDetector` reads packets: its stateless ``select`` runs in the
  decoder processes and keeps the few rows it needs (control-plane requests,
  industrial commands), its stateful ``evaluate`` runs once, in time order.

Events are buffered by the tumbling window of their time (a flow's ``first_seen``,
a packet's ``ts``) and a window is evaluated once, when the event time has passed
its end by the lateness (flows are exported when they end, up to the active
timeout later), so the same input gives the same findings however it was batched.
Windows close in time order, so state carried from one window to the next (a
"seen" set, a fitted model, a sequence number) is deterministic too.  A
detector's findings are flagged events; the engine counts them per group like a
rule's hits, so they become graded, aggregated, deterministic alerts the same way.

Detectors follow scikit-learn's conventions: parameters are set in ``__init__``
and stored unchanged, ``fit`` learns from baseline data and returns self,
learned state ends in ``_``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.grouping import unique
from detection.rules.hits import TUPLE_FIELDS
from detection.rules.model import Aggregate, Rule, derived_signature_id
from sensors.masks import true_mask

NEVER = -(1 << 62)
#: keys a detector remembers at most (nodes, peers, devices): beyond, the least recently used go
MAX_STATE_KEYS = 200_000
K = TypeVar("K")
V = TypeVar("V")


class LruDict(OrderedDict[K, V]):
    """A dict of at most ``max_items`` keys; reading or writing a key makes it the most recent, and
    a new key beyond the limit pushes out the least recent.  Detectors keep what they learn per
    node or peer in one, so a flood of spoofed sources cannot grow it without bound, while the
    nodes that keep talking stay."""

    def __init__(self, max_items: int = MAX_STATE_KEYS) -> None:
        super().__init__()
        self.max_items = max_items

    def __getitem__(self, key: K) -> V:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __contains__(self, key: object) -> bool:
        if not super().__contains__(key):
            return False
        self.move_to_end(key)  # type: ignore[arg-type]
        return True

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.max_items:
            self.popitem(last=False)


class Estimator:
    """scikit-learn's parameter protocol: every ``__init__`` argument is an attribute of the same name."""

    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> Estimator:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{type(self).__name__}: unknown parameter {k}")
            setattr(self, k, v)
        return self


class Detector(Estimator):
    """Base: subclasses set the class metadata and implement ``evaluate`` (and optionally ``fit``)."""

    #: what the detector reads: "flows" or "packets"
    source: ClassVar[str] = "flows"
    #: alert metadata (a UUID, a title, a Sigma level, ATT&CK/FiGHT tags, an EVE category)
    rule_id: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str] = ""
    level: ClassVar[str] = "medium"
    tags: ClassVar[list[str]] = []
    category: ClassVar[str] = "Potentially Bad Traffic"
    #: the columns ``evaluate`` reads
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto"]
    #: how findings are grouped into one alert
    group_by: ClassVar[tuple[str, ...]] = ("src_ip", "dst_ip")

    window_s: float = 3600.0
    #: findings of one group in one window that make an alert (1: every finding)
    threshold: int = 1
    #: True: ``evaluate`` judges each event on its own (from what came before it), so events are judged as
    #: they arrive rather than when their window closes (the same findings, found without delay)
    instant: ClassVar[bool] = False

    @property
    def time_column(self) -> str:
        return "first_seen" if self.source == "flows" else "ts"

    def fit(self, data: pa.Table) -> Detector:
        """Learn from baseline data (default: nothing to learn)."""
        return self

    def select(self, events: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The rows ``evaluate`` can use (bool mask; stateless and cheap): only these are buffered
        until their window closes, so a flood of what a detector never judges costs it nothing."""
        return np.ones(events.num_rows, dtype=bool)

    def evaluate(self, events: pa.Table) -> np.ndarray:
        """One closed window's events (in time order) -> bool mask of the events to report."""
        raise NotImplementedError

    def explain(self, events: pa.Table) -> list[str | None]:
        """Per reported event, why (shown in the alert's ``detail``); None when the title says it all."""
        return [None] * events.num_rows

    # -- the alert's rule --------------------------------------------------------------

    @property
    def rule(self) -> Rule:
        name = type(self).__name__
        return Rule(id=self.rule_id, title=self.title, status="stable", level=self.level, source=self.source,
                    selections={}, condition="", description=self.description, tags=list(self.tags),
                    category=self.category, detector=name,
                    aggregate=Aggregate(function="count", by=self.group_by, window_s=self.window_s,
                                        threshold=self.threshold),
                    signature_id=derived_signature_id(self.rule_id))


class FlowDetector(Detector):
    """A detector over exported flows."""


#: events one detector buffers at most until their windows close
MAX_BUFFERED_EVENTS = 250_000


class PacketDetector(Detector):
    """A detector over packets.  ``select`` must be stateless and cheap: it runs on every decoded
    batch in the decoder processes, and only the rows it keeps travel on to ``evaluate``."""

    source = "packets"
    #: every packet column ``select`` and ``evaluate`` read: the sensor decodes no other for the detector
    columns: ClassVar[list[str]] = ["ts", "src_ip", "dst_ip"]

    def select(self, packets: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The rows ``evaluate`` needs (bool mask)."""
        raise NotImplementedError


class ControlDetector(Detector):
    """A detector over control events (``detection.sessions.CONTROL_EVENT_SCHEMA``): what the session
    table saw on the control plane and when attributing user-plane flows to sessions."""

    source = "control"
    kinds: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[list[str]] = ["ts", "kind", "key", "src_ip", "dst_ip"]

    def select(self, events: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The events of this detector's kinds."""
        return true_mask(pc.is_in(events.column("kind"), pa.array(self.kinds, pa.string())))

    instant: ClassVar[bool] = True  # unless a subclass's evaluate needs the window

    def evaluate(self, events: pa.Table) -> np.ndarray:
        """Default: the session table already judged; every selected event is a finding."""
        return np.ones(events.num_rows, dtype=bool)

    def explain(self, events: pa.Table) -> list[str | None]:
        return events.column("detail").to_pylist() if "detail" in events.column_names else super().explain(events)


class Windowed:
    """Buffers one detector's events per tumbling window; ``update`` / ``flush`` -> flagged events.

    The buffer is capped (``max_events``): beyond it, the events of the groups
    (the detector's ``group_by``) with the fewest events are shed until a quarter
    of the room is free, and counted in ``shed_events``.  A flood of one-off
    sources is what gets shed; a repeated pattern (a beacon, a spoofer) stays.
    """

    def __init__(self, detector: Detector, lateness_s: float, max_events: int = MAX_BUFFERED_EVENTS) -> None:
        self.detector = detector
        self.window_ns = max(int(detector.window_s * 1e9), 1)
        self.lateness_ns = int(lateness_s * 1e9)
        self.max_events = max_events  # 0: no limit
        self.buffer: list[pa.Table] = []
        self.shed_events = 0
        self.closed = NEVER  # the last evaluated window index

    def update(self, events: pa.Table | None, watermark_ns: int | None) -> pa.Table | None:
        if self.detector.instant:  # nothing to wait for
            if events is None or not events.num_rows:
                return None
            self.buffer = [events.select(self.columns(events))]
            return self._evaluate(1 << 61)
        if events is not None and events.num_rows:
            self.buffer.append(events.select(self.columns(events)))
            if self.max_events and self.buffered > self.max_events:
                self._shed()
        if watermark_ns is None or not self.buffer:
            return None
        return self._evaluate((watermark_ns - self.lateness_ns) // self.window_ns - 1)

    @property
    def buffered(self) -> int:
        return sum(t.num_rows for t in self.buffer)

    def _shed(self) -> None:
        table = pa.concat_tables(self.buffer)
        have = set(table.column_names)
        by = [c for c in self.detector.group_by if c in have]
        keys = [pc.cast(table.column(c), pa.string()) for c in by]
        key = pc.binary_join_element_wise(*keys, "|") if len(keys) > 1 else keys[0]
        codes = pc.dictionary_encode(pc.fill_null(key, "")).combine_chunks().indices.to_numpy(zero_copy_only=False)
        sizes = np.bincount(codes)
        # keep the largest groups (ties: the earlier-coded, i.e. earlier-seen, group) within 3/4 of the room
        order = np.lexsort((np.arange(len(sizes)), -sizes))
        kept = order[:int(np.searchsorted(np.cumsum(sizes[order]), self.max_events * 3 // 4, side="right"))]
        keep = np.isin(codes, kept)
        self.shed_events += int((~keep).sum())
        table = table.filter(pa.array(keep))
        self.buffer = [table] if table.num_rows else []

    def flush(self) -> pa.Table | None:
        return self._evaluate(1 << 61) if self.buffer else None

    def columns(self, events: pa.Table) -> list[str]:
        """What the detector reads, and the 5-tuple its alerts carry."""
        wanted = [*self.detector.columns, self.detector.time_column, *(f.name for f in TUPLE_FIELDS)]
        have = set(events.column_names)
        return [c for c in dict.fromkeys(wanted) if c in have]

    def _evaluate(self, upto: int) -> pa.Table | None:
        """Evaluate windows (closed, upto]; late events join the next window evaluated."""
        table = pa.concat_tables(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        time_column = self.detector.time_column
        start = table.column(time_column).cast(pa.int64()).to_numpy(zero_copy_only=False)
        window = np.maximum(start // self.window_ns, self.closed + 1)
        due = window <= upto
        if not due.any():
            self.buffer = [table]
            return None
        rest = table.filter(pa.array(~due))
        self.buffer = [rest] if rest.num_rows else []
        ready = table.filter(pa.array(due)).append_column("window", pa.array(window[due]))
        ties = [("flow_id", "ascending")] if "flow_id" in ready.column_names else []  # packets: arrival order
        ready = ready.sort_by([("window", "ascending"), (time_column, "ascending"), *ties])
        flagged = []
        w = ready.column("window").to_numpy()
        for value in unique(w):  # in time order: state carries from one window to the next
            rows = ready.filter(pa.array(w == value)).drop_columns(["window"])
            mask = np.asarray(self.detector.evaluate(rows), dtype=bool)
            if mask.any():
                found = rows.filter(pa.array(mask))
                detail = self.detector.explain(found)
                if "detail" in found.column_names:  # control events carry their own: the explanation wins
                    found = found.drop_columns(["detail"])
                flagged.append(found.append_column("detail", pa.array(detail, pa.string())))
        self.closed = max(self.closed, int(w.max()))
        return pa.concat_tables(flagged) if flagged else None


def external(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Unicast addresses on the internet (not private, shared, loopback, link-local, multicast or broadcast)."""
    split = _split(addresses)  # text addresses are parsed once for both tests
    return ~_private(addresses, *split) & ~_multicast_or_broadcast(*split)


def gtpu_tunnelled(flows: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Flows carried in GTP-U with both tunnel endpoints known."""
    gtp = pc.and_(pc.fill_null(pc.equal(flows.column("tunnel_type"), "gtpu"), False),
                  pc.and_(flows.column("tunnel_src_ip").is_valid(), flows.column("tunnel_dst_ip").is_valid()))
    return np.asarray(gtp.to_numpy(zero_copy_only=False), dtype=bool)


def _split(addresses: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, is IPv4, first octet) of text or 16-byte addresses."""
    from detection.rules.compiler import address_halves

    hi, lo = address_halves(addresses)
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    return hi, lo, v4, (lo >> np.uint64(24)) & np.uint64(0xFF)


def private(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which addresses are private, shared, loopback or link-local (RFC 1918, 6598, 4193...)."""
    return _private(addresses, *_split(addresses))


def multicast_or_broadcast(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _multicast_or_broadcast(*_split(addresses))


def _private(addresses: pa.Array | pa.ChunkedArray, hi: np.ndarray, lo: np.ndarray, v4: np.ndarray, a: np.ndarray
             ) -> np.ndarray:
    b = (lo >> np.uint64(16)) & np.uint64(0xFF)
    private4 = (a == 10) | (a == 127) | ((a == 172) & (b >= 16) & (b < 32)) | ((a == 192) & (b == 168)) | \
        ((a == 100) & (b >= 64) & (b < 128)) | ((a == 169) & (b == 254))
    top = hi >> np.uint64(48)
    private6 = ((top & np.uint64(0xFE00)) == np.uint64(0xFC00)) | ((top & np.uint64(0xFFC0)) == np.uint64(0xFE80)) | \
        ((hi == 0) & (lo == 1))
    valid = np.asarray(pc.is_valid(addresses).to_numpy(zero_copy_only=False), dtype=bool)
    return valid & np.where(v4, private4, private6)


def _multicast_or_broadcast(hi: np.ndarray, lo: np.ndarray, v4: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.where(v4, (a >= 224) | ((lo & np.uint64(0xFF)) == 255), (hi >> np.uint64(56)) == np.uint64(0xFF))
