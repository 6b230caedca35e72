"""Stage 3 of the pipeline with detection (``ingest/pipeline.py`` has stages 1 and 2 and a flow meter's
stage 3): a sensor's flow parts of one batch, from every partition, merged in a canonical order -> session
table, user-plane attribution, rules and detectors over time windows, alerts, incidents, posture and trends.

Only a replay or a worker that detects imports this module (and with it the detection engine, its rules
and detectors): a flow meter starts without them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from detection.alerts import ALERT_SCHEMA
from detection.detectors import Detector, default_detectors
from detection.detectors.anomaly import AnomalyDetector, FlowAnomalyModel
from detection.engine import DetectionEngine
from detection.flows.planes import with_planes
from detection.incidents import INCIDENT_SCHEMA, IncidentBuilder
from detection.posture import POSTURE_CHANGE_SCHEMA, POSTURE_SCHEMA, PostureTracker
from detection.rules.loader import apply_overrides, load_rules
from detection.trend import TREND_SCHEMA, TREND_WARNING_SCHEMA, TrendConfig, TrendTracker
from ingest.control import ControlPlane
from ingest.pipeline import PACKET_ROW, FlowPart, FlowResults, ended_flows
from sensors.schema import empty_table


@dataclass
class Results(FlowResults):
    """Stage 3's output for one batch: what a store or the replay's files receive."""

    alerts: pa.Table = field(default_factory=lambda: empty_table(ALERT_SCHEMA))
    protos: dict[str, pa.Table] = field(default_factory=dict)
    incidents: pa.Table = field(default_factory=lambda: empty_table(INCIDENT_SCHEMA))  # the incidents this batch changed
    #: early warnings: alerts as they first reach their threshold, before they are final (for notification)
    warnings: pa.Table = field(default_factory=lambda: empty_table(ALERT_SCHEMA))
    posture: pa.Table = field(default_factory=lambda: empty_table(POSTURE_SCHEMA))  # scopes whose posture moved
    posture_changes: pa.Table = field(default_factory=lambda: empty_table(POSTURE_CHANGE_SCHEMA))  # level changes, why
    trend: pa.Table = field(default_factory=lambda: empty_table(TREND_SCHEMA))  # series whose bucket closed, with forecasts
    trend_warnings: pa.Table = field(default_factory=lambda: empty_table(TREND_WARNING_SCHEMA))  # forecasts crossing, crossings


def build_engine(rules: list[Path] | None = None, rule_overrides: dict[str, dict[str, Any]] | None = None,
                 detectors: list[Detector] | None = None, model: Path | None = None,
                 idle_timeout_s: float = 120.0, active_timeout_s: float = 1800.0,
                 intel: Path | None = None) -> DetectionEngine:
    """The detection engine from the options every entry point takes.

    ``rules``: rule files or directories; None for the bundled rules, [] for none.
    ``rule_overrides``: per rule id, ``enabled``/``threshold``/``window_s`` as tuned in the console.
    ``detectors``: stateful detectors; None for the defaults (none when ``rules`` is []).
    ``model``: an anomaly model file (liaowang train) to score flows with as well.
    ``intel``: a threat-intelligence configuration (``detection/intel/feeds.py``).
    Raises RuleError / ModelError / IntelConfigError.
    """
    if detectors is None:
        detectors = [] if rules == [] else default_detectors()
    if model is not None:
        detectors = [*detectors, AnomalyDetector(FlowAnomalyModel.load(model))]
    loaded = apply_overrides(load_rules(rules), rule_overrides or {})
    feeds = None
    if intel is not None:
        from detection.intel.feeds import IntelFeeds  # the feed readers load only when there are feeds

        feeds = IntelFeeds(intel)
    return DetectionEngine(loaded, flow_lateness_s=active_timeout_s + idle_timeout_s, detectors=detectors,
                           intel=feeds)


def rules_fingerprint(engine: DetectionEngine) -> str:
    """Packet hits name their rule by position: whoever selects them and whoever counts them must
    have loaded the same rules in the same order."""
    return hashlib.blake2b("\n".join(r.id for r in engine.rules).encode(), digest_size=8).hexdigest()


class DetectStage:
    """One sensor's detection: every partition's flow part of a batch at once, in batch order."""

    def __init__(self, engine: DetectionEngine, control: ControlPlane, trend: TrendConfig | None = None) -> None:
        self.engine = engine
        self.control = control
        self.incidents = IncidentBuilder(engine.rules)
        self.posture = PostureTracker(inventory=control.inventory)
        self.trend_config = trend if trend is not None else TrendConfig.load()
        self.trend = TrendTracker(self.trend_config)
        self.seq = -1
        self.ended = False

    def update(self, parts: list[FlowPart], flows_ready: Callable[[pa.Table], None] | None = None) -> Results:
        """The parts of one batch (any subset of partitions: a part that never came is empty).

        ``flows_ready``: is given the batch's flows (``Results.flows``) as soon as they are final, before the
        engine looks at them, so that writing them can overlap detection (the last batch's ~7,000 flows
        are otherwise written after its detection, with nothing else to do).
        """
        self.seq = max(p.seq for p in parts)
        old_flows, flows = ended_flows(parts)
        protos = _merge_messages([p.protos for p in parts])
        batch = next((p.batch for p in parts if p.batch is not None), None)
        hits = next((p.hits for p in parts if p.hits is not None), None)
        rows = next((p.rows for p in parts if p.rows is not None), None)
        context = self.control.sessions.context
        alerts = []
        closed = empty_table(ALERT_SCHEMA)
        old_incidents = empty_table(INCIDENT_SCHEMA)
        old_posture = (empty_table(POSTURE_SCHEMA), empty_table(POSTURE_CHANGE_SCHEMA))
        old_trend = (empty_table(TREND_SCHEMA), empty_table(TREND_WARNING_SCHEMA))
        # a new timeline (an unrelated capture): the old one's flows, alerts and incidents close first
        if old_flows is not None:
            old_flows, found = self.control.sessions.attribute(old_flows)
            found = pa.concat_tables([found, self.control.sessions.silent(None, 0, final=True)])
            old_flows = with_planes(old_flows)
            closed = pa.concat_tables([context(self.engine.update(None, old_flows, None, control=found)),
                                       context(self.engine.new_timeline())])
            old_incidents = self.incidents.update(closed)
            self.incidents = IncidentBuilder(self.engine.rules)
            old_posture = self.posture.update(closed, None)
            self.posture = PostureTracker(inventory=self.control.inventory)
            old_trend = self.trend.flush()
            self.trend = TrendTracker(self.trend_config)
        events = self.control.update(protos)
        flows, found = self.control.sessions.attribute(flows)
        flows = with_planes(flows)
        events = pa.concat_tables([events, found]) if found.num_rows else events
        silent = self.control.sessions.silent(None if batch is None else batch.last_ts_ns,
                                              int(self.engine.flow_lateness_s * 1e9), final=any(p.end for p in parts))
        events = pa.concat_tables([events, silent]) if silent.num_rows else events
        # the batch's flows as handed out: the old timeline's first
        all_flows = flows if old_flows is None else pa.concat_tables([old_flows, flows])
        if flows_ready is not None:
            flows_ready(all_flows)
        if any(p.end for p in parts):
            self.ended = True
            alerts.append(context(self.engine.update(None, flows, None, control=events)))
            alerts.append(context(self.engine.flush()))
        else:
            alerts.append(context(self.engine.update(hits, flows, None if batch is None else batch.last_ts_ns,
                                                     rows, events)))
        table = pa.concat_tables(alerts) if len(alerts) > 1 else alerts[0]
        incidents = self.incidents.update(table)
        posture, changes = self.posture.update(table, None if batch is None else batch.last_ts_ns)
        warnings = context(self.engine.take_warnings())
        trend = [old_trend, self.trend.update(pa.concat_tables([warnings, table]),
                                              None if batch is None else batch.last_ts_ns,
                                              batch.seconds if batch is not None else ())]
        if self.ended:
            trend.append(self.trend.flush())
        if old_flows is not None:
            table, incidents = pa.concat_tables([closed, table]), pa.concat_tables([old_incidents, incidents])
        if old_posture[0].num_rows or old_posture[1].num_rows:
            posture, changes = pa.concat_tables([old_posture[0], posture]), pa.concat_tables([old_posture[1], changes])
        return Results(flows=all_flows, alerts=table, protos=self.control.last_messages, batch=batch, incidents=incidents,
                       warnings=warnings, posture=posture, posture_changes=changes,
                       trend=_latest(pa.concat_tables([t[0] for t in trend]), "series"),
                       trend_warnings=pa.concat_tables([t[1] for t in trend]))


def _latest(table: pa.Table, key: str) -> pa.Table:
    """Of rows in time order, the last one per ``key``."""
    if table.num_rows < 2:
        return table
    last = {k: i for i, k in enumerate(table.column(key).to_pylist())}
    return table.take(sorted(last.values()))


def _merge_messages(parts: list[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    """Messages of all partitions in the batch's packet order (the session table follows it)."""
    names = list(dict.fromkeys(n for p in parts for n in p))
    merged = {}
    for name in names:
        tables = [p[name] for p in parts if name in p]
        t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        if len(tables) > 1:  # stable: several messages of one packet keep their order
            order = np.argsort(np.asarray(t.column(PACKET_ROW).to_numpy(zero_copy_only=False)), kind="stable")
            t = t.take(pa.array(order))
        merged[name] = t
    return merged


__all__ = ["DetectStage", "Results", "build_engine", "rules_fingerprint"]
