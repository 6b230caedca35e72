"""The detection pipeline: rules over packets and flows -> alert tables.

Two stages, so each runs where it belongs:

- ``packet_hits(packets)`` / ``packet_rows(packets)``: stateless, evaluates every
  packet rule on a decoded batch and keeps the selected rows, and keeps the rows
  the packet detectors read (runs in the decoder processes);
- ``update(packet_hits, flows, watermark, packet_rows)`` / ``flush()``: stateful,
  evaluates flow rules on exported flows and the detectors on their closed
  windows, counts all hits over time windows and returns the alerts whose
  episodes ended (runs once, in order).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.alerts import ALERT_SCHEMA, alert_table
from detection.detectors.base import MAX_BUFFERED_EVENTS, NEVER, Detector, PacketDetector, Windowed
from detection.features import columns_read
from detection.intel.matcher import PACKET_COLUMNS as INTEL_COLUMNS
from detection.intel.matcher import intel_rules
from detection.rules.compiler import ADDRESS_FIELDS
from detection.rules.hits import HIT_SCHEMA, TUPLE_FIELDS, Everything, HitExtractor, text_column
from detection.rules.model import Rule
from detection.rules.windows import MAX_PARTIAL_ROWS, Episode, WindowCounter
from sensors.capture.frames import PACKET_LATENESS_S
from sensors.schema import empty_table

if TYPE_CHECKING:
    from detection.intel.feeds import IntelFeeds  # the feed readers load only for a replay given feeds


class _IntelLevel:
    """Selects the intelligence matches of one level, for that level's rule."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def matches(self, table: pa.Table, cache: dict[str, object] | None = None) -> np.ndarray:
        return np.asarray(pc.equal(table.column("intel_level"), self.rule.level).to_numpy(zero_copy_only=False),
                          dtype=bool)


class DetectionEngine:
    """Rules over packets and flows, and stateful flow detectors, -> alert tables."""

    def __init__(self, rules: list[Rule], flow_lateness_s: float = 1800.0 + 120.0,
                 detectors: list[Detector] | None = None, max_partial_rows: int = MAX_PARTIAL_ROWS,
                 max_buffered_events: int = MAX_BUFFERED_EVENTS, intel: IntelFeeds | None = None) -> None:
        """``max_partial_rows``: rule counts each window counter holds; ``max_buffered_events``: events
        each detector holds until its window closes (0: no limit; beyond, the lightest groups are shed).
        ``intel``: threat-intelligence feeds matched against every packet batch (``detection/intel``)."""
        self.flow_lateness_s = flow_lateness_s  # how late a flow may end after its packets
        detectors = detectors or []
        # detectors raise alerts like rules: each gets a rule entry after the loaded rules, and the
        # intelligence rules come last (always there: sensors and detection workers agree on positions)
        intel_levels = intel_rules()
        self.rules = rules + [d.rule for d in detectors] + intel_levels
        self.intel = intel
        first_intel = len(rules) + len(detectors)
        self._intel_hits = HitExtractor([], "packets", matchers=[(first_intel + i, _IntelLevel(r))
                                                                 for i, r in enumerate(intel_levels)])
        self._packet_rules = HitExtractor(rules, "packets")
        self._flow_rules = HitExtractor(rules, "flows")
        self._detectors = [(Windowed(d, PACKET_LATENESS_S if d.source == "packets" else flow_lateness_s,
                                     max_buffered_events),
                            HitExtractor([], d.source, matchers=[(len(rules) + i, Everything(d.rule))]))
                           for i, d in enumerate(detectors)]
        # each detector as given (fitted or not): a new timeline starts again from this state
        self._initial = [copy.deepcopy(d) for d in detectors]
        # what the packet detectors read, and the 5-tuple their alerts carry
        self._packet_columns = list(dict.fromkeys(
            [c for d in detectors if isinstance(d, PacketDetector) for c in (d.time_column, *d.columns)]
            + [f.name for f in TUPLE_FIELDS if f.name not in ("flow_id", "detail")]))
        self._packet_windows = WindowCounter(self.rules, PACKET_LATENESS_S, max_partial_rows)
        # a flow's event time is its first packet, and flows are exported when they end
        self._flow_windows = WindowCounter(self.rules, flow_lateness_s, max_partial_rows)
        self.alerts = 0

    # a checkpoint holds the state (windows, detectors, rules); compiled selections are rebuilt
    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_packet_rules"], state["_flow_rules"]
        state["_detectors"] = [w for w, _ in self._detectors]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        windows: list[Windowed] = state.pop("_detectors")  # type: ignore[assignment]
        self.__dict__.update(state)
        n = len(self.rules) - len(windows) - len(intel_rules())
        self._packet_rules = HitExtractor(self.rules[:n], "packets")
        self._flow_rules = HitExtractor(self.rules[:n], "flows")
        self._detectors = [(w, HitExtractor([], w.detector.source, matchers=[(n + i, Everything(w.detector.rule))]))
                           for i, w in enumerate(windows)]

    @property
    def has_packet_rules(self) -> bool:
        """Are there packet rules (or intelligence feeds) to evaluate on every batch?"""
        return bool(self._packet_rules.compiled) or self.intel is not None

    @property
    def packet_columns(self) -> frozenset[str]:
        """Every packet column the packet rules (with their features' inputs), packet detectors and
        intelligence matches read: a sensor decodes no other for them."""
        rules = {name for _, matcher in self._packet_rules.compiled for name in matcher.rule.fields()}
        return frozenset(columns_read(rules) | set(self._packet_rules.tuple_columns)
                         | {c for d in self._packet_detectors for c in (d.time_column, *d.columns)}
                         | (INTEL_COLUMNS if self.intel is not None else set()))

    @property
    def _packet_detectors(self) -> list[PacketDetector]:
        return [w.detector for w, _ in self._detectors if isinstance(w.detector, PacketDetector)]

    @property
    def has_packet_detectors(self) -> bool:
        return bool(self._packet_detectors)

    def packet_hits(self, packets: pa.RecordBatch) -> pa.RecordBatch:
        hits = self._packet_rules.hits(packets)
        if self.intel is not None:
            matched = self.intel.matcher().match(packets)
            if matched.num_rows:
                intel = self._intel_hits.hits(matched)
                hits = pa.concat_batches([hits, intel]) if hits.num_rows else intel
        return hits

    def packet_rows(self, packets: pa.RecordBatch) -> pa.RecordBatch:
        """The rows any packet detector reads, with addresses as text (usually a handful)."""
        keep = np.zeros(packets.num_rows, dtype=bool)
        for d in self._packet_detectors:
            keep |= np.asarray(d.select(packets), dtype=bool)
        rows = packets.select(self._packet_columns).filter(pa.array(keep))
        arrays = [text_column(rows.column(c), c) if c in ADDRESS_FIELDS else rows.column(c)
                  for c in rows.column_names]
        return pa.RecordBatch.from_arrays(arrays, names=rows.column_names)

    def update(self, packet_hits: pa.RecordBatch | None, flows: pa.Table | None, watermark_ns: int | None,
               packet_rows: pa.RecordBatch | pa.Table | None = None, control: pa.Table | None = None) -> pa.Table:
        """``control``: control events from the session table (counted with the flows' lateness:
        user-plane findings come when flows end)."""
        parts = [packet_hits] if packet_hits is not None else []
        parts += self._detector_hits("packets", packet_rows, watermark_ns)
        packet_level = pa.Table.from_batches(parts, HIT_SCHEMA) if parts else empty_table(HIT_SCHEMA)
        episodes = self._packet_windows.update(packet_level, watermark_ns)
        has_flows = flows is not None and flows.num_rows
        parts = [self._flow_rules.hits(flows)] if has_flows and self._flow_rules.compiled else []
        parts += self._detector_hits("flows", flows, watermark_ns)
        parts += self._detector_hits("control", control, watermark_ns)
        flow_hits = pa.Table.from_batches(parts) if parts else empty_table(HIT_SCHEMA)
        episodes += self._flow_windows.update(flow_hits, watermark_ns)
        return self._alerts(episodes)

    def take_warnings(self) -> pa.Table:
        """Early warnings since the last call: alerts as their counts first reach the threshold, before their
        episode closes (``detection/rules/windows.py``); the alert follows later with the same ``alert_id``
        and its final counts.  For real-time notification; they depend on batching, alerts do not."""
        episodes = self._packet_windows.take_warnings() + self._flow_windows.take_warnings()
        return alert_table(episodes, self.rules) if episodes else empty_table(ALERT_SCHEMA)

    def new_timeline(self) -> pa.Table:
        """An input that starts earlier than the event time reached (unrelated captures replayed together)
        gets a timeline of its own (``ingest.pipeline.starts_new_timeline``): every window and episode is
        closed first, so its events are counted in their own windows rather than as late ones, and the
        detectors forget what they learned from the other input (hosts seen, a device's master, a node's
        sequence) and start again from their state as given.  Returns the alerts that closed."""
        alerts = self.flush()
        for counter in (self._packet_windows, self._flow_windows):
            counter.reset()
        for (windows, _), initial in zip(self._detectors, self._initial):
            windows.closed = NEVER
            windows.detector = copy.deepcopy(initial)
        return alerts

    def _detector_hits(self, source: str, events: pa.Table | pa.RecordBatch | None, watermark_ns: int | None,
                       final: bool = False) -> list[pa.RecordBatch]:
        parts = []
        for windows, extractor in self._detectors:
            detector = windows.detector
            if detector.source != source:
                continue
            if isinstance(events, pa.RecordBatch):
                events = pa.Table.from_batches([events])
            mine = events
            if events is not None and events.num_rows:
                # only what the detector keeps is filtered: all 72 columns of a flow table cost ~10x more
                selected = pa.array(np.asarray(detector.select(events), dtype=bool))
                mine = events.select(windows.columns(events)).filter(selected)
            flagged = windows.flush() if final else windows.update(mine, watermark_ns)
            if flagged is not None:
                parts.append(extractor.hits(flagged))
        return parts

    def shed(self) -> dict[str, int]:
        """What the state limits dropped so far (all 0 unless a flood outgrew them)."""
        counters = (self._packet_windows, self._flow_windows)
        return {"rule_groups": sum(c.shed_groups for c in counters),
                "rule_events": sum(c.shed_events for c in counters),
                "detector_events": sum(w.shed_events for w, _ in self._detectors)}

    @property
    def watermark_ns(self) -> int:
        return max(self._packet_windows.watermark, self._flow_windows.watermark)

    def flush(self) -> pa.Table:
        episodes = []
        for source, counter in (("packets", self._packet_windows), ("flows", self._flow_windows),
                                ("control", self._flow_windows)):
            parts = self._detector_hits(source, None, None, final=True)
            if parts:
                episodes += counter.update(pa.Table.from_batches(parts), None)
        return self._alerts(episodes + self._packet_windows.flush() + self._flow_windows.flush())

    def _alerts(self, episodes: list[Episode]) -> pa.Table:
        table = alert_table(episodes, self.rules) if episodes else empty_table(ALERT_SCHEMA)
        self.alerts += table.num_rows
        return table
