"""``liaowang replay``: capture files -> packets -> flows -> flows.parquet + eve.json.

The embedded, in-process pipeline: each stage is table -> table, the same code
that the scale-out deployment runs behind Kafka.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import pyarrow as pa

from detection.flows.assembler import MAX_FLOWS
from detection.flows.export import APP_NAMES
from detection.flows.schema import FLOW_SCHEMA
from detection.sessions import MAX_SESSIONS
from ingest.control import ControlPlane
from ingest.pipeline import (
    BatchInfo,
    FlowResults,
    FlowsOnlyStage,
    FlowStage,
    Part,
    sensor_parts,
    starts_new_timeline,
)
from ingest.privacy import Pseudonymizer
from ingest.sinks import EveSink, ParquetSink
from ingest.workers import BatchStats
from sensors.capture.frames import FrameSource
from sensors.capture.source import (
    DETECTION_CHUNK_BYTES,
    REPLAY_CHUNK_BYTES,
    CaptureFiles,
    Damage,
    expand_inputs,
    order_by_time,
)
from sensors.schema import DecodeStatus, TunnelType

if TYPE_CHECKING:  # a replay needs none of them unless asked (--notify, a live capture's retention, --store)
    from detection.detectors import Detector  # a flow meter loads no detection modules (~15 ms of its start)
    from detection.engine import DetectionEngine
    from detection.trend import TrendConfig
    from ingest.detect import Results
    from ingest.notify import Notifier
    from ingest.results import ControlSnapshots, PendingWrites
    from ingest.retention import Retention
    from ingest.store.api import Store


#: flows per Parquet row group and per EVE formatting call (see ``run``)
FLOW_ROW_GROUP, EVE_BATCH_ROWS = 8192, 4096


@dataclass
class ReplaySummary:
    files: int = 0
    flows: int = 0
    alerts: int = 0
    alert_levels: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    traffic: BatchStats = field(default_factory=BatchStats)
    damages: list[Damage] = field(default_factory=list)
    batches: list[BatchInfo] = field(default_factory=list)  # for sensor_stats
    live: bool = False
    #: False for a flow meter (``--flows-only``): no alerts were looked for
    detection: bool = True
    #: incidents per level
    incidents: collections.Counter[str] = field(default_factory=collections.Counter)
    #: what the state limits dropped: flows evicted from the table, and engine.shed()
    shed: dict[str, int] = field(default_factory=dict)
    #: notifications per delivery status (empty: no notifier)
    notifications: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def packets(self) -> int:
        return self.traffic.packets

    @property
    def bytes(self) -> int:
        return self.traffic.bytes

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def decode_errors(self) -> dict[str, int]:
        return {DecodeStatus(c).name.lower(): v for c, v in sorted(self.traffic.decode_status.items()) if c != 0}

    @property
    def protocols(self) -> dict[str, int]:
        return {APP_NAMES.get(c, str(c)): v for c, v in self.traffic.app_proto.most_common() if c}

    @property
    def tunnels(self) -> dict[str, int]:
        return {TunnelType(c).name.lower(): v for c, v in self.traffic.tunnel_type.most_common() if c}

    def as_stats(self) -> dict[str, object]:
        return {
            "capture": {"files": self.files, "packets": self.packets, "bytes": self.bytes,
                        **({"kernel_drops": self.traffic.dropped} if self.live else {})},
            "decoder": {"errors": self.decode_errors, "protocols": self.protocols, "tunnels": self.tunnels},
            "flow": {"total": self.flows, "evicted": self.shed.get("flows", 0)},
            **({"detect": {"alerts": self.alerts, "levels": dict(self.alert_levels),
                           "shed": {k: v for k, v in self.shed.items() if k not in ("flows", "sessions")},
                           "sessions_evicted": self.shed.get("sessions", 0)}} if self.detection else {}),
            "damage": [{"file": d.path, "offset": d.offset, "reason": d.reason} for d in self.damages],
            "uptime_s": round(self.seconds, 3),
        }


def replay(
    inputs: list[str],
    out_dir: Path,
    *,
    chunk_bytes: int | None = None,
    idle_timeout_s: float = 120.0,
    active_timeout_s: float = 1800.0,
    progress: Callable[[ReplaySummary, int, int], None] | None = None,
    processes: int | None = None,
    rules: list[Path] | None = None,
    rule_overrides: dict[str, dict[str, Any]] | None = None,
    detectors: list[Detector] | None = None,
    max_flows: int = MAX_FLOWS,
    max_sessions: int = MAX_SESSIONS,
    notify: Path | None = None,
    intel: Path | None = None,
    trend: Path | None = None,
    flows_only: bool = False,
) -> ReplaySummary:
    """Run the embedded pipeline; raises CaptureError or RuleError before writing anything if an input is unusable.

    ``rules``: rule files or directories; None for the bundled rules, [] for none.
    ``rule_overrides``: per rule id, ``enabled``/``threshold``/``window_s`` as tuned in the console.
    ``detectors``: stateful flow and packet detectors; None for the defaults (none when ``rules`` is []).
    ``notify``: a notification settings file (``ingest/notify``): alerts and incidents go out as they are found.
    ``intel``: a threat-intelligence configuration (``detection/intel``): its feeds' indicators are matched.
    ``trend``: trend-forecast settings and thresholds (``detection/trend.py``); None for ``rules/forecast/trend.yml``.
    ``flows_only``: a flow meter, like nfstream: ``flows.parquet`` and ``eve.json`` alone (the options above that
    configure detection, notification or trends must be left unset).
    ``chunk_bytes``: the read buffer per batch; None for :data:`REPLAY_CHUNK_BYTES` (a flow meter) or
    :data:`DETECTION_CHUNK_BYTES`.

    With ``processes`` > 1 (the default on a fork-capable machine with 2+ cores)
    decoding runs in ``processes - 1`` forked processes while this one assembles
    flows; the output is identical either way.
    """
    files = order_by_time(expand_inputs(inputs))
    if flows_only and (rules or rule_overrides or detectors or notify or intel or trend):
        raise ValueError("a flows-only replay runs no detection: no rules, detectors, notifications, intel or trends")
    engine, trend_config = None, None
    if not flows_only:
        from detection.trend import TrendConfig
        from ingest.detect import build_engine

        trend_config = TrendConfig.load(trend)
        engine = build_engine(rules, rule_overrides, detectors, None, idle_timeout_s, active_timeout_s, intel)
    sizes = [Path(f).stat().st_size for f in files]

    def on_batch(summary: ReplaySummary, stats: BatchStats) -> None:
        if progress is not None:
            done = sum(sizes[: stats.file_index]) + min(stats.file_offset, sizes[stats.file_index])
            progress(summary, done, sum(sizes))

    out_dir.mkdir(parents=True, exist_ok=True)
    notifier = None
    if notify is not None:
        from ingest.notify import Notifier

        notifier = Notifier(notify, log_path=out_dir / "notifications.jsonl")
    chunk_bytes = chunk_bytes or (REPLAY_CHUNK_BYTES if flows_only else DETECTION_CHUNK_BYTES)
    summary = run(CaptureFiles(files, chunk_bytes), out_dir, engine, idle_timeout_s=idle_timeout_s,
                  active_timeout_s=active_timeout_s, processes=processes, on_batch=on_batch, max_flows=max_flows,
                  max_sessions=max_sessions, notifier=notifier, trend=trend_config)
    return summary


def run(source: FrameSource, out_dir: Path, engine: DetectionEngine | None, *, idle_timeout_s: float = 120.0,
        active_timeout_s: float = 1800.0, processes: int | None = None, in_flight: int | None = None,
        on_batch: Callable[[ReplaySummary, BatchStats], None] | None = None, store: Store | None = None,
        sensor: str = "", store_interval_s: float = 1.0, retention: Retention | None = None,
        max_flows: int = MAX_FLOWS, max_sessions: int = MAX_SESSIONS, notifier: Notifier | None = None,
        trend: TrendConfig | None = None) -> ReplaySummary:
    """The three pipeline stages in this process over any frame source, into ``out_dir``.

    ``store``: also write results there as they come (every ``store_interval_s``),
    as ``sensor``; a live capture's results are then visible while it runs.
    ``retention``: keep the packets (a live capture's evidence).
    ``notifier``: is offered every batch's alerts and incidents; its record of what it sent goes to the store
    as it comes and to ``notifications.parquet`` at the end.
    ``trend``: trend-forecast settings; None for ``rules/forecast/trend.yml``.
    ``engine`` None: a flow meter: ``flows.parquet`` and ``eve.json`` (flow and stats events) alone, no signalling
    messages, sessions, detection or posture.
    """
    flows_only = engine is None
    if flows_only and (store is not None or notifier is not None):
        raise ValueError("a flow meter (no engine) takes no notifier or store: it writes its two files")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ReplaySummary(files=len(source.files) if isinstance(source, CaptureFiles) else 0, detection=not flows_only)
    started = time.perf_counter()
    # the decoders start first: the rest of the setup (sinks, stages, threads, the Parquet module) overlaps
    # their first batches instead of delaying them (~10 ms of a replay's start)
    parts = sensor_parts(source, engine, Pseudonymizer.for_output(out_dir), processes=processes,
                         damages=summary.damages, in_flight=in_flight, retention=retention,
                         flow_timeouts=(idle_timeout_s, active_timeout_s))
    # flows are written as they end, in pieces of a few thousand, on the writer threads below: buffered
    # until 16,384, a 1M-packet replay's 17,556 flows were all written after its last batch (~40 ms alone)
    flow_sink = ParquetSink(out_dir / "flows.parquet", FLOW_SCHEMA, dictionary=False, row_group_rows=FLOW_ROW_GROUP)
    eve = EveSink(out_dir / "eve.json", batch_rows=EVE_BATCH_ROWS)
    # the three stages of ingest/pipeline.py, in this process, one partition
    flow_stage = FlowStage(idle_timeout_s, active_timeout_s, max_flows)
    detect: FlowsOnlyStage | DetectStage = FlowsOnlyStage()
    # two writer threads, one per sink: Parquet encoding and the EVE string kernels
    # run in Arrow's C++ without the GIL, overlapping the next batch's flow work
    # and each other; one write per sink in flight.  A third one writes the signalling
    # tables and feeds the store.
    writers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"liaowang-sink-{i}") for i in range(3)]
    # the sinks' Parquet module (~12 ms to import) loads on a writer thread while the decoders fill the first
    # batch, not later in whichever thread writes first
    writers[2].submit(importlib.import_module, "pyarrow.parquet")
    alert_sink, control = None, None
    if engine is not None:  # stage 3 with detection: its modules load only here
        from detection.alerts import ALERT_SCHEMA
        from ingest.detect import DetectStage

        alert_sink = ParquetSink(out_dir / "alerts.parquet", ALERT_SCHEMA)
        control = ControlPlane(out_dir, max_sessions, writer=writers[2])
        detect = DetectStage(engine, control, trend)
    pending: list[Future[Any]] = []
    to_store: PendingWrites | None = None
    snapshots: ControlSnapshots | None = None
    if store is not None:  # the store's modules load only for a run that feeds one
        from ingest.results import ControlSnapshots, PendingWrites

        to_store, snapshots = PendingWrites(), ControlSnapshots()
    stored: list[Future[dict[str, int]]] = []
    last_store = time.monotonic()
    incidents: dict[str, pa.Table] = {}  # the latest row of each incident
    posture: dict[str, pa.Table] = {}  # the latest row of each posture scope
    posture_changes: list[pa.Table] = []
    trend_rows: dict[str, pa.Table] = {}  # the latest row of each trend series
    trend_warnings: list[pa.Table] = []
    intel_reloads = [-1]  # the feeds' reload count last stored
    notify_version = [-1]  # the notification settings' version last stored

    def write_flows(table: pa.Table) -> None:
        """A batch's flows, as soon as stage 3 has them final (before its detection: see DetectStage.update)."""
        while pending:
            pending.pop().result()
        if table.num_rows:
            pending.append(writers[0].submit(flow_sink.write, table))
            pending.append(writers[1].submit(eve.write_flows, table))

    def emit(flow_results: FlowResults, final: bool = False) -> None:
        """The rest of a batch's results (its flows are on their way: ``write_flows``)."""
        nonlocal to_store, last_store
        if engine is None:  # a flow meter: flows alone
            return
        while pending:
            pending.pop().result()
        results = cast("Results", flow_results)
        changed = results.incidents.select(["incident_id", "merged_into"]).to_pylist()
        for i, row in enumerate(changed):
            if row["merged_into"]:
                incidents.pop(row["incident_id"], None)
            else:
                incidents[row["incident_id"]] = results.incidents.slice(i, 1)
        for i, scope in enumerate(results.posture.column("scope").to_pylist()):
            posture[scope] = results.posture.slice(i, 1)
        if results.posture_changes.num_rows:
            posture_changes.append(results.posture_changes)
        for i, series in enumerate(results.trend.column("series").to_pylist()):
            trend_rows[series] = results.trend.slice(i, 1)
        if results.trend_warnings.num_rows:
            trend_warnings.append(results.trend_warnings)
        alerts = results.alerts
        if notifier is not None:
            notifier.offer(pa.concat_tables([results.warnings, alerts]), results.incidents, results.trend_warnings)
        if alerts.num_rows:
            assert alert_sink is not None
            summary.alerts += alerts.num_rows
            summary.alert_levels.update(alerts.column("level").to_pylist())
            pending.append(writers[0].submit(alert_sink.write, alerts))
            pending.append(writers[1].submit(eve.write_alerts, alerts))
        if store is None or control is None:
            return
        assert to_store is not None and snapshots is not None
        to_store.add_results(sensor, results, snapshots.due(control, final))
        if notifier is not None:
            to_store.add("notifications", notifier.drain())
            if notifier.settings_version != notify_version[0]:  # first, and after each change: the console shows it
                notify_version[0] = notifier.settings_version
                to_store.add("notify_routes", notifier.settings())
        if engine.intel is not None:
            engine.intel.matcher()  # looks for changed feeds here too (decoder processes look for themselves)
            if engine.intel.reloads != intel_reloads[0]:  # first, and after each change: the console shows it
                intel_reloads[0] = engine.intel.reloads
                to_store.add("intel_feeds", engine.intel.status())
        if final or time.monotonic() - last_store >= store_interval_s:
            while stored:
                stored.pop().result()  # one store write in flight; its errors surface here
            stored.append(writers[2].submit(to_store.write, store))
            to_store, last_store = PendingWrites(), time.monotonic()

    seq = 0
    for part, stats in parts:
        seq = part.seq + 1
        summary.traffic.add(stats)
        assert part.batch is not None
        b = part.batch
        part.restart = starts_new_timeline(b, flow_stage.flows.clock_ns)  # as split() decides it for partitions
        summary.batches.append(b)
        emit(detect.update([flow_stage.update(part)], write_flows))
        if on_batch is not None:
            summary.seconds = time.perf_counter() - started
            on_batch(summary, stats)
    closing: list[Future[Any]] = []
    if control is not None:  # no more messages: their files close beside the last flows' detection
        closing.append(writers[2].submit(control.close_messages))

    def write_last_flows(table: pa.Table) -> None:
        """The flows still open at the end: written, and their file closed, beside their detection."""
        write_flows(table)
        pending.append(writers[0].submit(flow_sink.close))

    emit(detect.update([flow_stage.update(Part(seq=seq, end=True))], write_last_flows), final=True)
    while pending:  # the last writes
        pending.pop().result()
    for done in stored:
        done.result()
    if notifier is not None:  # what is still being delivered has a few seconds; the record is complete
        notifier.close()
        if store is not None:
            store.write("notifications", notifier.drain())
        summary.notifications = collections.Counter(notifier.table().column("status").to_pylist())
    summary.flows = flow_stage.flows.flows_exported
    summary.shed = {"flows": flow_stage.flows.flows_evicted, **(engine.shed() if engine is not None else {})}
    if control is not None:
        summary.shed["sessions"] = control.sessions.evicted
    summary.incidents = collections.Counter(t.column("level")[0].as_py() for t in incidents.values())
    summary.live = source.live
    summary.seconds = time.perf_counter() - started
    last = summary.traffic.last_ts_ns or 0

    def finish_eve() -> None:
        eve.write_stats(dt.datetime.fromtimestamp(last / 1e9, tz=dt.UTC), summary.as_stats())
        eve.close()

    # the sinks still hold up to a row group each: finish them side by side, on the three writer threads
    def finish_parquet() -> None:  # flows.parquet is closed already (write_last_flows)
        if alert_sink is not None:
            alert_sink.close()

    def finish_tables() -> None:
        finish_eve()
        if engine is None:
            return
        import pyarrow.parquet as pq  # here, on a writer thread: see ParquetSink

        from detection.incidents import INCIDENT_SCHEMA
        from detection.posture import POSTURE_CHANGE_SCHEMA, POSTURE_SCHEMA
        from detection.trend import TREND_SCHEMA, TREND_WARNING_SCHEMA

        rows = sorted(incidents.values(), key=lambda t: (t.column("first_seen")[0].value, t.column("incident_id")[0].as_py()))
        pq.write_table(pa.concat_tables(rows) if rows else INCIDENT_SCHEMA.empty_table(), out_dir / "incidents.parquet")
        if notifier is not None:
            pq.write_table(notifier.table(), out_dir / "notifications.parquet")
            pq.write_table(notifier.settings(), out_dir / "notify_routes.parquet")
        if engine.intel is not None:
            pq.write_table(engine.intel.status(), out_dir / "intel_feeds.parquet")
        pq.write_table(pa.concat_tables([posture[k] for k in sorted(posture)]) if posture
                       else POSTURE_SCHEMA.empty_table(), out_dir / "posture.parquet")
        pq.write_table(pa.concat_tables(posture_changes) if posture_changes else POSTURE_CHANGE_SCHEMA.empty_table(),
                       out_dir / "posture_changes.parquet")
        pq.write_table(pa.concat_tables([trend_rows[k] for k in sorted(trend_rows)]) if trend_rows
                       else TREND_SCHEMA.empty_table(), out_dir / "trend.parquet")
        pq.write_table(pa.concat_tables(trend_warnings) if trend_warnings else TREND_WARNING_SCHEMA.empty_table(),
                       out_dir / "trend_warnings.parquet")

    closing += [writers[0].submit(finish_parquet), writers[1].submit(finish_tables)]
    if control is not None:
        closing.append(writers[2].submit(control.close))
    for f in closing:
        f.result()
    for w in writers:
        w.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def progress_bar(stream: TextIO | None = None) -> Callable[[ReplaySummary, int, int], None]:
    """A one-line progress display for terminals (no output when not a TTY)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return lambda s, d, t: None

    def show(s: ReplaySummary, done: int, total: int) -> None:
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * 30)
        stream.write(f"\r[{bar:<30}] {frac:6.1%}  {s.packets:>12,} packets  {s.packets_per_second:>12,.0f} pkt/s")
        stream.flush()

    return show


def _incident_counts(counts: collections.Counter[str]) -> str:
    """Incidents per level, in the levels' order (their module loads only when there are incidents)."""
    from detection.incidents import LEVELS

    order = [name for _, name in LEVELS]
    return f"{sum(counts.values()):,} (" + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: order.index(kv[0]))) + ")"


def format_summary(s: ReplaySummary, extra: list[tuple[str, str]] | None = None) -> str:
    rows = [
        *([] if s.live else [("files", f"{s.files}")]),
        ("packets", f"{s.packets:,}"),
        *([("kernel drops", f"{s.traffic.dropped:,}")] if s.live else []),
        ("bytes", f"{s.bytes:,}"),
        ("flows", f"{s.flows:,}"),
        ("alerts", (f"{s.alerts:,}" + (" (" + ", ".join(f"{k} {v}" for k, v in s.alert_levels.most_common()) + ")"
                                       if s.alerts else "")) if s.detection else "none looked for (flows only)"),
        *([("incidents", _incident_counts(s.incidents))] if s.incidents else []),
        *([("notifications", ", ".join(f"{k} {v:,}" for k, v in s.notifications.most_common()))]
          if s.notifications else []),
        ("time", f"{s.seconds:.2f} s"),
        ("packets/s", f"{s.packets_per_second:,.0f}"),
        ("decode errors", ", ".join(f"{k} {v:,}" for k, v in s.decode_errors.items()) or "none"),
        ("protocols", ", ".join(f"{k} {v:,}" for k, v in list(s.protocols.items())[:12]) or "none"),
        ("tunnelled packets", ", ".join(f"{k} {v:,}" for k, v in s.tunnels.items()) or "none"),
    ]
    for d in s.damages:
        rows.append(("damaged file", f"{d.path} at byte {d.offset}: {d.reason}"))
    if any(s.shed.values()):  # a flood outgrew the state limits: say what it cost
        rows.append(("state limits", f"{s.shed.get('flows', 0):,} flows evicted early; shed "
                                     f"{s.shed.get('rule_groups', 0):,} rule counts "
                                     f"({s.shed.get('rule_events', 0):,} events), "
                                     f"{s.shed.get('detector_events', 0):,} detector events; "
                                     f"{s.shed.get('sessions', 0):,} sessions forgotten"))
    rows += extra or []
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

