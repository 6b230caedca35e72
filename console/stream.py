"""``liaowang sensor`` and ``liaowang detect``: the scale-out pipeline through Kafka (docs/streaming.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detection.detectors.anomaly import ModelError
from detection.flows.assembler import MAX_FLOWS
from detection.intel import IntelConfigError
from detection.rules.loader import RuleError
from detection.trend import TrendConfig, TrendConfigError
from sensors.capture.afpacket import FANOUT_MODES, CaptureOpenError, RingConfig
from sensors.capture.bpf import FilterError
from sensors.capture.live import ENGINES, LiveCapture, LiveOptions
from sensors.capture.source import DEFAULT_CHUNK_BYTES, CaptureError

# notification channels, packet retention and its cipher are imported where a command uses them: every other
# command, `liaowang replay` among them, would load them for nothing
if TYPE_CHECKING:
    from ingest.notify import Notifier
    from ingest.retention import Retention

ENV = {"kafka": "LIAOWANG_KAFKA", "store": "LIAOWANG_STORE", "group": "LIAOWANG_GROUP",
       "sensor_id": "LIAOWANG_SENSOR_ID"}


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("sensor", help="capture an interface (or replay files) into detection: embedded or via Kafka")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--iface", metavar="IF", help="capture this network interface (AF_PACKET ring)")
    what.add_argument("--pcap", nargs="+", metavar="PCAP_OR_DIR",
                      help="publish pcap/pcapng files (gzip ok), directories, globs to Kafka")
    s.add_argument("--out", metavar="DIR", help="embedded (--iface): write flows.parquet, eve.json, ... here, as "
                                               "`liaowang replay` does, instead of publishing to Kafka")
    s.add_argument("--store", metavar="URI", help="embedded (--iface): also write results into this store as they "
                                                 "come (DuckDB directory or http(s)://elasticsearch:9200)")
    _common(s)
    live = s.add_argument_group("live capture (--iface)")
    live.add_argument("--engine", default="auto", choices=ENGINES,
                      help="afpacket (Linux ring, the default), pcap (libpcap via tcpdump), scapy (last resort)")
    live.add_argument("--filter", metavar="BPF", help="capture filter, tcpdump syntax (e.g. 'udp port 2152 or sctp')")
    live.add_argument("--ring-mb", type=float, default=256.0, metavar="MB", help="kernel ring size (default 256)")
    live.add_argument("--block-kb", type=int, default=1024, metavar="KB",
                      help="ring block size, also the largest whole frame (default 1024)")
    live.add_argument("--block-timeout-ms", type=int, default=50, metavar="MS",
                      help="a partly filled ring block is handed over after this long (default 50)")
    live.add_argument("--batch-ms", type=int, default=500, metavar="MS",
                      help="a batch goes to decoding after this long even if not full (default 500)")
    live.add_argument("--backlog-mb", type=float, default=1024.0, metavar="MB",
                      help="captured batches that may wait for decoders before the ring fills and drops "
                           "(default 1024)")
    live.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    live.add_argument("--fanout-group", type=int, metavar="ID",
                      help="share the interface with other sensor processes in this PACKET_FANOUT group")
    live.add_argument("--fanout-mode", default="hash", choices=sorted(FANOUT_MODES),
                      help="how the group splits packets (default hash: both directions of a flow together)")
    live.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: at SIGINT/SIGTERM)")
    keep = s.add_argument_group("packet retention (--iface): rolling pcapng files the console serves flows from")
    keep.add_argument("--retain", metavar="DIR", help="keep every captured packet in DIR (off by default)")
    keep.add_argument("--retain-gb", type=float, default=10.0, metavar="GB",
                      help="the directory's size limit; the oldest files go first (default 10)")
    keep.add_argument("--retain-hours", type=float, default=0.0, metavar="H",
                      help="delete files older than this (default 0: size limit only)")
    keep.add_argument("--retain-file-mb", type=float, default=256.0, metavar="MB",
                      help="start a new file at this size (default 256)")
    keep.add_argument("--evidence-keyring", metavar="FILE",
                      help="seal retained packets with AES-GCM under this keyring's newest key (default: "
                           "$LIAOWANG_EVIDENCE_KEY_FILE; make one with `liaowang evidence rotate FILE`)")
    keep.add_argument("--retain-file-s", type=float, default=300.0, metavar="S",
                      help="... or after this many seconds of capture (default 300)")
    s.add_argument("--sensor-id", default=os.environ.get(ENV["sensor_id"]) or socket.gethostname(),
                   help="name of this capture point (default: $LIAOWANG_SENSOR_ID or the host name)")
    s.add_argument("--spool", metavar="DIR", help="disk spool for batches the broker cannot take yet "
                                                 "(default: <data dir>/spool/<sensor id>)")
    s.add_argument("--spool-mb", type=float, default=1024.0, metavar="MB", help="spool size limit (default 1024)")
    s.add_argument("--drop-when-full", action="store_true",
                   help="drop batches when the spool is full (default when paced; unpaced files wait instead)")
    s.add_argument("--pps", type=float, metavar="N", help="pace the replay at N packets/s (as a live tap would)")
    s.add_argument("--speed", type=float, metavar="X", help="pace the replay at X times capture time")
    s.add_argument("--chunk-mb", type=float, default=None, metavar="MB",
                   help="bytes per batch (default: 32 for --pcap, as replay; 8 for --iface, where --batch-ms also "
                        "ends a batch); each batch costs a fixed share of the work, so small ones cost throughput")
    s.add_argument("--processes", type=int, default=None, choices=(1, 2, 3), metavar="{1,2,3}",
                   help="decoding processes, as for replay")
    s.add_argument("--rule-overrides", metavar="FILE", help="the console's rule-overrides.json, if the workers' "
                                                            "store has one (packet rules are selected here)")
    s.add_argument("--notify", metavar="FILE", help="embedded (--iface): notification settings (YAML, "
                                                    "docs/notifications.md), re-read when the file changes")
    s.add_argument("-q", "--quiet", action="store_true", help="no summary")
    s.set_defaults(func=_sensor)

    d = sub.add_parser("detect", help="a detection worker: Kafka consumer group -> flows and alerts in a store")
    _common(d)
    d.add_argument("--group", default=os.environ.get(ENV["group"], "liaowang-detect"),
                   help="consumer group (default: $LIAOWANG_GROUP or liaowang-detect)")
    d.add_argument("--store", default=os.environ.get(ENV["store"]), metavar="URI",
                   help="DuckDB store directory or http(s)://elasticsearch:9200 (default: $LIAOWANG_STORE)")
    d.add_argument("--idle-timeout", type=float, default=120.0, metavar="S", help="flow idle timeout, seconds")
    d.add_argument("--max-flows", type=int, default=MAX_FLOWS, metavar="N",
                   help=f"flow table limit per sensor stream (default {MAX_FLOWS:,}; 0: no limit)")
    d.add_argument("--active-timeout", type=float, default=1800.0, metavar="S", help="flow active timeout, seconds")
    d.add_argument("--commit-interval", type=float, default=1.0, metavar="S",
                   help="seconds between checkpoints: state saved, offsets committed (default 1); results are "
                        "stored then, and as soon as the worker has caught up")
    d.add_argument("--name", default=socket.gethostname(), help="this worker's name in logs")
    d.add_argument("--notify", metavar="FILE", help="notification settings (YAML, docs/notifications.md) for the "
                                                    "alerts and incidents this worker finds")
    d.set_defaults(func=_detect)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", default=os.environ.get(ENV["kafka"]), metavar="BOOTSTRAP",
                   help="Kafka bootstrap servers, host:port[,host:port] (default: $LIAOWANG_KAFKA)")
    p.add_argument("--partitions", type=int, default=int(os.environ.get("LIAOWANG_PARTITIONS", "4")), metavar="N",
                   help="partitions of the packets topic when it is created (default 4)")
    p.add_argument("--topic-prefix", default=os.environ.get("LIAOWANG_TOPIC_PREFIX", "liaowang"),
                   help="topic names: PREFIX.packets, PREFIX.flows, PREFIX.dead-letter")
    p.add_argument("--rules", action="append", metavar="PATH",
                   help="rule file or directory (repeatable; default: the bundled rules/); same on both sides")
    p.add_argument("--no-rules", action="store_true", help="flows only, no detection")
    p.add_argument("--model", metavar="FILE", help="also score flows with an anomaly model (liaowang train)")
    p.add_argument("--intel", metavar="FILE", help="threat-intelligence feeds (YAML, docs/intel.md), re-read when "
                                                   "they change; matched where packets are decoded (the sensor)")
    p.add_argument("--trend", metavar="FILE", help="trend-forecast settings and thresholds (YAML; default "
                                                   "rules/forecast/trend.yml); used where detection runs")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    p.add_argument("--log-level", default=os.environ.get("LIAOWANG_LOG_LEVEL", "INFO"))


def _setup(args: argparse.Namespace, kafka: bool = True) -> bool:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its reconnect chatter; ours says what matters
    if not kafka:
        return True
    if not args.kafka:
        print("liaowang: error: give --kafka BOOTSTRAP (or set LIAOWANG_KAFKA)", file=sys.stderr)
        return False
    if args.partitions < 1:
        print("liaowang: error: --partitions must be at least 1", file=sys.stderr)
        return False
    from ingest.stream.topics import security_settings

    try:
        security_settings()
    except ValueError as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return False
    return True


def _intel(args: argparse.Namespace) -> Path | None:
    return Path(args.intel) if args.intel else None


def _trend(args: argparse.Namespace) -> Path | None:
    return Path(args.trend) if args.trend else None


def _rules(args: argparse.Namespace) -> list[Path] | None:
    return [] if args.no_rules else ([Path(r) for r in args.rules] if args.rules else None)


def _sensor(args: argparse.Namespace) -> int:
    from ingest.detect import build_engine
    from ingest.privacy import Pseudonymizer
    from ingest.store import DEFAULT_STORE
    from ingest.stream.metrics import SensorMetrics, serve
    from ingest.stream.sensor import Sensor
    from ingest.stream.topics import Topics

    if args.pcap and args.retain:
        print("liaowang: error: --retain is for --iface (capture files are kept already)", file=sys.stderr)
        return 2
    if args.pcap and (args.out or args.store):
        print("liaowang: error: --out/--store are for --iface; to process files in place use `liaowang replay`",
              file=sys.stderr)
        return 2
    if args.iface and args.out:
        return _sensor_embedded(args)
    if args.iface and args.store:
        print("liaowang: error: --store needs --out DIR too (the run's files)", file=sys.stderr)
        return 2
    if args.iface and not args.kafka:
        print("liaowang: error: give --out DIR (embedded) or --kafka BOOTSTRAP (or set LIAOWANG_KAFKA)",
              file=sys.stderr)
        return 2
    if not _setup(args):
        return 2
    spool = Path(args.spool) if args.spool else DEFAULT_STORE / "spool" / args.sensor_id
    live = None
    try:
        overrides = json.loads(Path(args.rule_overrides).read_text()) if args.rule_overrides else None
        engine = build_engine(_rules(args), overrides, model=Path(args.model) if args.model else None,
                              intel=_intel(args))
        live = _live_capture(args) if args.iface else None
        metrics = SensorMetrics()
        if live is not None:
            metrics.watch(lambda: live.counters)
        if args.metrics_port:
            serve(metrics.registry, args.metrics_port)
        sensor = Sensor(args.kafka, Topics(args.topic_prefix, args.partitions), sensor_id=args.sensor_id,
                        spool_dir=spool, max_spool_bytes=int(args.spool_mb * 1024 * 1024),
                        block_when_full=not (args.drop_when_full or args.pps or args.speed or live),
                        metrics=metrics)
        # identities are pseudonymised here: give every sensor the same key (LIAOWANG_PSEUDONYM_KEY)
        pseudonyms = Pseudonymizer.for_output(spool)
        if live is not None:
            from ingest.live import in_flight, stop_on_signals

            restore = stop_on_signals(live, args.duration)
            try:
                summary = sensor.stream(live, engine, pseudonyms, processes=args.processes,
                                        in_flight=in_flight(live, int(args.backlog_mb * 1024 * 1024)),
                                        retention=_retention(args))
            finally:
                restore()
        else:
            chunk_mb = args.chunk_mb or DEFAULT_CHUNK_BYTES / (1 << 20)
            summary = sensor.replay(args.pcap, engine, pseudonyms, chunk_bytes=int(chunk_mb * 1024 * 1024),
                                    processes=args.processes, pps=args.pps, speed=args.speed)
    except (CaptureError, CaptureOpenError, FilterError, RuleError, ModelError, IntelConfigError, OSError,
            ValueError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if live is not None:
            live.close()
    if not args.quiet:
        drops = f"; kernel drops {summary.dropped:,}" if live is not None else ""
        print(f"  sensor {summary.sensor} run {summary.run}: {summary.packets:,} packets in {summary.batches:,} "
              f"batches, {summary.seconds:.2f} s; {summary.sent:,} delivered, {summary.outbox.spooled:,} spooled, "
              f"{summary.outbox.dropped_batches:,} dropped ({summary.outbox.dropped_packets:,} packets){drops}")
    return 1 if summary.outbox.dropped_batches else 0


def _retention(args: argparse.Namespace) -> Retention | None:
    if not args.retain:
        return None
    from ingest.retention import Retention
    from sensors.capture.retain import RetentionPolicy
    from sensors.capture.seal import Keyring

    if min(args.retain_gb, args.retain_file_mb, args.retain_file_s) <= 0 or args.retain_hours < 0:
        raise ValueError("--retain-gb, --retain-file-mb and --retain-file-s must be positive, --retain-hours >= 0")
    keyring = Keyring.load(args.evidence_keyring)
    if keyring is None:
        print(f"liaowang: warning: retained packets in {args.retain} are not encrypted (--evidence-keyring FILE "
              "seals them)", file=sys.stderr)
    return Retention(RetentionPolicy(Path(args.retain), max_bytes=int(args.retain_gb * (1 << 30)),
                                     max_age_s=args.retain_hours * 3600, file_bytes=int(args.retain_file_mb * (1 << 20)),
                                     file_seconds=args.retain_file_s, keyring=keyring))


def _live_capture(args: argparse.Namespace) -> LiveCapture:
    ring = RingConfig(ring_bytes=int(args.ring_mb * 1024 * 1024), block_bytes=args.block_kb * 1024,
                      block_timeout_ms=args.block_timeout_ms, promiscuous=not args.no_promisc, bpf_filter=args.filter,
                      fanout_group=args.fanout_group, fanout_mode=args.fanout_mode)
    live = LiveCapture(args.iface, LiveOptions(engine=args.engine, ring=ring,
                                                chunk_bytes=int((args.chunk_mb or 8.0) * 1024 * 1024),
                                                max_wait_s=args.batch_ms / 1000))

    def say_when_ready() -> None:  # the pcap and scapy engines open the interface in the capture process
        if live.ready.wait():
            logging.getLogger("liaowang.capture").info(
                "capturing on %s (%s engine, ring %.0f MB, filter %s)", args.iface, live.engine, args.ring_mb,
                repr(args.filter) if args.filter else "none")

    threading.Thread(target=say_when_ready, daemon=True).start()
    return live


def _sensor_embedded(args: argparse.Namespace) -> int:
    """--iface IF --out DIR [--store URI]: the replay's outputs, from the wire."""
    from console.cli import _rule_overrides
    from ingest.detect import build_engine
    from ingest.live import capture
    from ingest.notify import NotifyConfigError
    from ingest.replay import format_summary
    from ingest.store import StoreError, open_store
    from ingest.stream.metrics import SensorMetrics, serve

    _setup(args, kafka=False)
    store = None
    try:
        overrides = _rule_overrides(args.store) if args.store else None
        engine = build_engine(_rules(args), overrides, model=Path(args.model) if args.model else None,
                              intel=_intel(args))
        store = open_store(args.store) if args.store else None
        retention = _retention(args)
        notifier = _notifier(args, store)
        trend = TrendConfig.load(_trend(args))
        live = _live_capture(args)
    except (CaptureOpenError, FilterError, RuleError, ModelError, StoreError, NotifyConfigError, IntelConfigError,
            TrendConfigError, OSError, ValueError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        if store is not None:
            store.close()
        return 2
    metrics = SensorMetrics()
    metrics.watch(lambda: live.counters)
    if args.metrics_port:
        serve(metrics.registry, args.metrics_port)

    def on_batch(summary: Any, stats: Any) -> None:
        metrics.packets.inc(stats.packets)
        metrics.bytes.inc(stats.bytes)
        metrics.batches.inc()
        metrics.decode_errors.inc(stats.packets - stats.decode_status.get(0, 0))
        if stats.dropped:
            logging.getLogger("liaowang.capture").warning("%s: the kernel dropped %d packets (ring full)",
                                                          args.iface, stats.dropped)

    try:
        summary = capture(live, Path(args.out), engine, store=store, sensor=args.sensor_id, processes=args.processes,
                          backlog_bytes=int(args.backlog_mb * 1024 * 1024), duration_s=args.duration,
                          on_batch=on_batch, retention=retention, notifier=notifier, trend=trend)
    except (StoreError, OSError) as exc:
        print(f"liaowang: error: {exc} (the files in {args.out} hold what was captured)", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.close()
    if not args.quiet:
        c = live.counters
        print(format_summary(summary, [
            ("interface", f"{args.iface} ({live.engine}); kernel saw {c.packets:,}, dropped {c.drops:,}, "
                          f"ring full {c.freezes:,} times"),
            ("output", f"{args.out}/flows.parquet, {args.out}/eve.json" + (f"; store {args.store}" if store else "")),
            *([("packets kept", f"{retention.directory} ({_size(retention.directory)})")] if retention else [])]))
    return 0


def _notifier(args: argparse.Namespace, store: Any) -> Notifier | None:
    """A sensor's or worker's notifier: escalation asks the store whether analysts took incidents up."""
    if not args.notify:
        return None
    from ingest.notify import Notifier

    out = getattr(args, "out", None)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    return Notifier(Path(args.notify), log_path=Path(out) / "notifications.jsonl" if out else None,
                    acknowledged=store.acknowledged_incidents if store is not None else None)


def _size(directory: str) -> str:
    from sensors.capture.retain import retained_files

    files = retained_files(Path(directory))
    sealed = "sealed" if files and all(f.sealed for f in files) else "not sealed"
    return f"{len(files)} files, {sum(f.bytes for f in files) / 1e6:,.1f} MB, {sealed}"


def _detect(args: argparse.Namespace) -> int:
    from console.cli import _rule_overrides
    from ingest.detect import build_engine
    from ingest.notify import NotifyConfigError
    from ingest.store import StoreError, open_store
    from ingest.stream.metrics import WorkerMetrics, serve
    from ingest.stream.topics import Topics
    from ingest.stream.worker import Worker, WorkerError

    if not _setup(args):
        return 2
    if not args.store:
        print("liaowang: error: give --store URI (or set LIAOWANG_STORE)", file=sys.stderr)
        return 2
    try:
        overrides = _rule_overrides(args.store)
        model = Path(args.model) if args.model else None

        def engine() -> Any:
            return build_engine(_rules(args), overrides, model=model, intel=_intel(args),
                                idle_timeout_s=args.idle_timeout,
                                active_timeout_s=args.active_timeout)

        store = open_store(args.store)
        metrics = WorkerMetrics()
        if args.metrics_port:
            serve(metrics.registry, args.metrics_port)
        # builds an engine once: rule and model errors show now, not at the first batch
        worker = Worker(args.kafka, args.group, store, Topics(args.topic_prefix, args.partitions), engine,
                        idle_timeout_s=args.idle_timeout, active_timeout_s=args.active_timeout,
                        commit_interval_s=args.commit_interval, metrics=metrics, name=args.name,
                        max_flows=args.max_flows, notifier=_notifier(args, store),
                        trend=TrendConfig.load(_trend(args)))
    except (RuleError, ModelError, StoreError, NotifyConfigError, IntelConfigError, TrendConfigError, OSError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    try:
        worker.run()
    except (WorkerError, StoreError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
