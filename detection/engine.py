"""The detection pipeline: rules over packets and flows -> alert tables.

Two stages, so each runs where it belongs:

- ``packet_hits(packets)``: stateless, evaluates every packet rule on a decoded
  batch and keeps the selected rows (runs in the decoder processes);
- ``update(packet_hits, flows)`` / ``flush()``: stateful, evaluates flow rules on
  exported flows, counts both kinds of hits over time windows and returns the
  alerts whose episodes ended (runs once, in order).
"""

from __future__ import annotations

import pyarrow as pa

from detection.alerts import ALERT_SCHEMA, alert_table
from detection.detectors.base import NEVER, FlowDetector, WindowedFlows
from detection.rules.hits import HIT_SCHEMA, Everything, HitExtractor
from detection.rules.model import Rule
from detection.rules.windows import Episode, WindowCounter

#: how late a packet may come after a later one (files of one replay overlap a little)
PACKET_LATENESS_S = 5.0
PACKET_LATENESS_NS = int(PACKET_LATENESS_S * 1e9)


class DetectionEngine:
    """Rules over packets and flows, and stateful flow detectors, -> alert tables."""

    def __init__(self, rules: list[Rule], flow_lateness_s: float = 1800.0 + 120.0,
                 detectors: list[FlowDetector] | None = None) -> None:
        detectors = detectors or []
        # detectors raise alerts like rules: each gets a rule entry after the loaded rules
        self.rules = rules + [d.rule for d in detectors]
        self._packet_rules = HitExtractor(rules, "packets")
        self._flow_rules = HitExtractor(rules, "flows")
        self._detectors = [(WindowedFlows(d, flow_lateness_s),
                            HitExtractor([], "flows", matchers=[(len(rules) + i, Everything(d.rule))]))
                           for i, d in enumerate(detectors)]
        self._packet_windows = WindowCounter(self.rules, PACKET_LATENESS_S)
        # a flow's event time is its first packet, and flows are exported when they end
        self._flow_windows = WindowCounter(self.rules, flow_lateness_s)
        self.alerts = 0

    @property
    def has_packet_rules(self) -> bool:
        return bool(self._packet_rules.compiled)

    def packet_hits(self, packets: pa.RecordBatch) -> pa.RecordBatch:
        return self._packet_rules.hits(packets)

    def update(self, packet_hits: pa.RecordBatch | None, flows: pa.Table | None, watermark_ns: int | None) -> pa.Table:
        hits = packet_hits if packet_hits is not None else HIT_SCHEMA.empty_table()
        episodes = self._packet_windows.update(hits, watermark_ns)
        has_flows = flows is not None and flows.num_rows
        parts = [self._flow_rules.hits(flows)] if has_flows and self._flow_rules.compiled else []
        parts += self._detector_hits(flows, watermark_ns)
        flow_hits = pa.Table.from_batches(parts) if parts else HIT_SCHEMA.empty_table()
        episodes += self._flow_windows.update(flow_hits, watermark_ns)
        return self._alerts(episodes)

    def input_starts(self, first_ts_ns: int | None) -> pa.Table:
        """Call before the first events of a new input.  An input that starts earlier than the event
        time reached (unrelated captures replayed together) gets a timeline of its own: every window
        and episode is closed first, so its events are counted in their own windows rather than as
        late ones.  Returns the alerts that closed."""
        if first_ts_ns is None or first_ts_ns >= self.watermark_ns - PACKET_LATENESS_NS:
            return ALERT_SCHEMA.empty_table()
        alerts = self.flush()
        for counter in (self._packet_windows, self._flow_windows):
            counter.reset()
        for windows, _ in self._detectors:
            windows.closed = NEVER
        return alerts

    def _detector_hits(self, flows: pa.Table | None, watermark_ns: int | None, final: bool = False
                       ) -> list[pa.RecordBatch]:
        parts = []
        for windows, extractor in self._detectors:
            flagged = windows.flush() if final else windows.update(flows, watermark_ns)
            if flagged is not None:
                parts.append(extractor.hits(flagged))
        return parts

    @property
    def watermark_ns(self) -> int:
        return max(self._packet_windows.watermark, self._flow_windows.watermark)

    def flush(self) -> pa.Table:
        parts = self._detector_hits(None, None, final=True)
        episodes = self._flow_windows.update(pa.Table.from_batches(parts), None) if parts else []
        return self._alerts(episodes + self._packet_windows.flush() + self._flow_windows.flush())

    def _alerts(self, episodes: list[Episode]) -> pa.Table:
        table = alert_table(episodes, self.rules) if episodes else ALERT_SCHEMA.empty_table()
        self.alerts += table.num_rows
        return table
