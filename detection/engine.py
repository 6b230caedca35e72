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
from detection.rules.hits import HIT_SCHEMA, HitExtractor
from detection.rules.model import Rule
from detection.rules.windows import Episode, WindowCounter

#: how late a packet may come after a later one (files of one replay overlap a little)
PACKET_LATENESS_S = 5.0


class DetectionEngine:
    def __init__(self, rules: list[Rule], flow_lateness_s: float = 1800.0 + 120.0) -> None:
        self.rules = rules
        self._packet_rules = HitExtractor(rules, "packets")
        self._flow_rules = HitExtractor(rules, "flows")
        self._packet_windows = WindowCounter(rules, PACKET_LATENESS_S)
        # a flow's event time is its first packet, and flows are exported when they end
        self._flow_windows = WindowCounter(rules, flow_lateness_s)
        self.alerts = 0

    @property
    def has_packet_rules(self) -> bool:
        return bool(self._packet_rules.compiled)

    def packet_hits(self, packets: pa.RecordBatch) -> pa.RecordBatch:
        return self._packet_rules.hits(packets)

    def update(self, packet_hits: pa.RecordBatch | None, flows: pa.Table | None, watermark_ns: int | None) -> pa.Table:
        hits = packet_hits if packet_hits is not None else HIT_SCHEMA.empty_table()
        episodes = self._packet_windows.update(hits, watermark_ns)
        flow_hits = self._flow_rules.hits(flows) if flows is not None and flows.num_rows else HIT_SCHEMA.empty_table()
        episodes += self._flow_windows.update(flow_hits, watermark_ns)
        return self._alerts(episodes)

    def flush(self) -> pa.Table:
        return self._alerts(self._packet_windows.flush() + self._flow_windows.flush())

    def _alerts(self, episodes: list[Episode]) -> pa.Table:
        table = alert_table(episodes, self.rules) if episodes else ALERT_SCHEMA.empty_table()
        self.alerts += table.num_rows
        return table
