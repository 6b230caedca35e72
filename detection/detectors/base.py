"""Stateful detectors over flows: what a rule's selection cannot say (periodicity, who owns a TEID,
whether a host was ever seen), evaluated per closed time window.

Flows are buffered by the tumbling window of their ``first_seen`` and a window is
evaluated once, when the event time has passed its end by the flow lateness
(flows are exported when they end, up to the active timeout later), so the
same flows give the same findings however they were batched.  Windows close in
time order, so state carried from one window to the next (a "seen" set, a
fitted model) is deterministic too.  A detector's findings are flagged flows;
the engine counts them per group like a rule's hits, so they become graded,
aggregated, deterministic alerts the same way.

Detectors follow scikit-learn's conventions: parameters are set in ``__init__``
and stored unchanged, ``fit`` learns from baseline flows and returns self,
learned state ends in ``_``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.rules.hits import TUPLE_FIELDS
from detection.rules.model import Aggregate, Rule, derived_signature_id

NEVER = -(1 << 62)


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


class FlowDetector(Estimator):
    """Base: subclasses set the class metadata and implement ``evaluate`` (and optionally ``fit``)."""

    #: alert metadata (a UUID, a title, a Sigma level, ATT&CK/FiGHT tags, an EVE category)
    rule_id: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str] = ""
    level: ClassVar[str] = "medium"
    tags: ClassVar[list[str]] = []
    category: ClassVar[str] = "Potentially Bad Traffic"
    #: the flow columns ``evaluate`` reads
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto"]
    #: how findings are grouped into one alert
    group_by: ClassVar[tuple[str, ...]] = ("src_ip", "dst_ip")

    window_s: float = 3600.0

    def fit(self, flows: pa.Table) -> FlowDetector:
        """Learn from baseline flows (default: nothing to learn)."""
        return self

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        """One closed window's flows (sorted by first_seen, flow_id) -> bool mask of the flows to report."""
        raise NotImplementedError

    def explain(self, flows: pa.Table) -> list[str | None]:
        """Per reported flow, why (shown in the alert's ``detail``); None when the title says it all."""
        return [None] * flows.num_rows

    # -- the alert's rule --------------------------------------------------------------

    @property
    def rule(self) -> Rule:
        name = type(self).__name__
        return Rule(id=self.rule_id, title=self.title, status="stable", level=self.level, source="flows",
                    selections={}, condition="", description=self.description, tags=list(self.tags),
                    category=self.category, detector=name,
                    aggregate=Aggregate(function="count", by=self.group_by, window_s=self.window_s, threshold=1),
                    signature_id=derived_signature_id(self.rule_id))


class WindowedFlows:
    """Buffers one detector's flows per tumbling window; ``update`` / ``flush`` -> flagged flows."""

    def __init__(self, detector: FlowDetector, lateness_s: float) -> None:
        self.detector = detector
        self.window_ns = max(int(detector.window_s * 1e9), 1)
        self.lateness_ns = int(lateness_s * 1e9)
        self.buffer: list[pa.Table] = []
        self.closed = NEVER  # the last evaluated window index

    def update(self, flows: pa.Table | None, watermark_ns: int | None) -> pa.Table | None:
        if flows is not None and flows.num_rows:
            self.buffer.append(flows.select(self._columns(flows)))
        if watermark_ns is None or not self.buffer:
            return None
        return self._evaluate((watermark_ns - self.lateness_ns) // self.window_ns - 1)

    def flush(self) -> pa.Table | None:
        return self._evaluate(1 << 61) if self.buffer else None

    def _columns(self, flows: pa.Table) -> list[str]:
        """What the detector reads, and the 5-tuple its alerts carry."""
        wanted = [*self.detector.columns, "first_seen", *(f.name for f in TUPLE_FIELDS)]
        return [c for c in dict.fromkeys(wanted) if c in flows.column_names]

    def _evaluate(self, upto: int) -> pa.Table | None:
        """Evaluate windows (closed, upto]; late flows join the next window evaluated."""
        table = pa.concat_tables(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        start = table.column("first_seen").cast(pa.int64()).to_numpy(zero_copy_only=False)
        window = np.maximum(start // self.window_ns, self.closed + 1)
        due = window <= upto
        if not due.any():
            self.buffer = [table]
            return None
        rest = table.filter(pa.array(~due))
        self.buffer = [rest] if rest.num_rows else []
        ready = table.filter(pa.array(due)).append_column("window", pa.array(window[due]))
        ready = ready.sort_by([("window", "ascending"), ("first_seen", "ascending"), ("flow_id", "ascending")])
        flagged = []
        w = ready.column("window").to_numpy()
        for value in np.unique(w):  # in time order: state carries from one window to the next
            rows = ready.filter(pa.array(w == value)).drop_columns(["window"])
            mask = np.asarray(self.detector.evaluate(rows), dtype=bool)
            if mask.any():
                found = rows.filter(pa.array(mask))
                detail = self.detector.explain(found)
                flagged.append(found.append_column("detail", pa.array(detail, pa.string())))
        self.closed = max(self.closed, int(w.max()))
        return pa.concat_tables(flagged) if flagged else None


def _split(addresses: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, is IPv4, first octet) of text or 16-byte addresses."""
    from detection.rules.compiler import address_halves

    hi, lo = address_halves(addresses)
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    return hi, lo, v4, (lo >> np.uint64(24)) & np.uint64(0xFF)


def private(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which addresses are private, shared, loopback or link-local (RFC 1918, 6598, 4193...)."""
    hi, lo, v4, a = _split(addresses)
    b = (lo >> np.uint64(16)) & np.uint64(0xFF)
    private4 = (a == 10) | (a == 127) | ((a == 172) & (b >= 16) & (b < 32)) | ((a == 192) & (b == 168)) | \
        ((a == 100) & (b >= 64) & (b < 128)) | ((a == 169) & (b == 254))
    top = hi >> np.uint64(48)
    private6 = ((top & np.uint64(0xFE00)) == np.uint64(0xFC00)) | ((top & np.uint64(0xFFC0)) == np.uint64(0xFE80)) | \
        ((hi == 0) & (lo == 1))
    valid = np.asarray(pc.is_valid(addresses).to_numpy(zero_copy_only=False), dtype=bool)
    return valid & np.where(v4, private4, private6)


def multicast_or_broadcast(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    hi, lo, v4, a = _split(addresses)
    return np.where(v4, (a >= 224) | ((lo & np.uint64(0xFF)) == 255), (hi >> np.uint64(56)) == np.uint64(0xFF))
