"""The ``liaowang`` command."""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import sys
from pathlib import Path

# read when pyarrow and numpy are first imported: Arrow's allocator (see tune_malloc), and one BLAS
# thread (the work is spread over processes; OpenBLAS's idle threads spun for ~2% of a replay's CPU)
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _import_lasting(*modules: str) -> None:
    """Import modules whose objects live as long as the process (a replay's make ~57,000): collecting while
    they load finds nothing (~25 ms of a replay's start, before its decoders can begin), and frozen after,
    later collections need not scan them again (forked decoders keep sharing their pages too)."""
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    gc.disable()
    try:
        for m in missing:
            importlib.import_module(m)
    finally:
        gc.freeze()
        gc.enable()


_import_lasting("detection.flows.assembler", "detection.sessions", "sensors.capture.source")
from detection.flows.assembler import MAX_FLOWS  # noqa: E402
from detection.sessions import MAX_SESSIONS  # noqa: E402
from sensors.capture.source import DETECTION_CHUNK_BYTES, REPLAY_CHUNK_BYTES, CaptureError  # noqa: E402

#: young objects allocated (net) between collections: 700 by default, but a batch's signalling messages
#: alone make ~10,000 short-lived objects, which die by themselves before the next batch (30 -> 12 ms of the
#: collector per 1M-packet replay); cycles are still collected
GC_YOUNG_THRESHOLD = 20_000


def _replay(args: argparse.Namespace) -> int:
    # a flow meter loads no detection modules (the engine, rules, detectors: ~15 ms of its start)
    _import_lasting("ingest.replay", *(() if args.flows_only else ("ingest.detect",)))
    from ingest.replay import format_summary, progress_bar, replay

    if args.flows_only:
        extra = [f"--{name}" for name in ("rules", "model", "notify", "intel", "trend") if getattr(args, name)]
        if extra:
            print(f"liaowang: error: --flows-only runs no detection: drop {', '.join(extra)}", file=sys.stderr)
            return 2
    errors: tuple[type[Exception], ...] = (CaptureError, *_setting_errors(args))
    try:
        detectors = None
        overrides = _rule_overrides(args.store) if args.store and not args.flows_only else None
        if args.model:
            from detection.detectors import default_detectors
            from detection.detectors.anomaly import AnomalyDetector, FlowAnomalyModel

            detectors = default_detectors() + [AnomalyDetector(FlowAnomalyModel.load(Path(args.model)))]
        summary = replay(
            args.inputs,
            Path(args.out),
            chunk_bytes=int(args.chunk_mb * 1024 * 1024) if args.chunk_mb else None,
            idle_timeout_s=args.idle_timeout,
            active_timeout_s=args.active_timeout,
            max_flows=args.max_flows,
            max_sessions=args.max_sessions,
            progress=None if args.quiet else progress_bar(),
            processes=args.processes,
            rules=[] if args.no_rules else ([Path(r) for r in args.rules] if args.rules else None),
            rule_overrides=overrides,
            detectors=detectors,
            notify=Path(args.notify) if args.notify else None,
            intel=Path(args.intel) if args.intel else None,
            trend=Path(args.trend) if args.trend else None,
            flows_only=args.flows_only,
        )
    except errors as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(format_summary(summary, [("output", f"{args.out}/flows.parquet, {args.out}/eve.json")]))
    for d in summary.damages:
        print(f"liaowang: warning: {d.path}: damaged at byte {d.offset}: {d.reason}", file=sys.stderr)
    if args.store:
        from ingest.load import load_output
        from ingest.store import StoreError, open_store

        try:
            with open_store(args.store) as store:
                added = load_output(Path(args.out), store, summary)
        except StoreError as exc:
            print(f"liaowang: error: {exc} (the replay's files in {args.out} are complete)", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"  {'stored':<18} {args.store}: " + ", ".join(f"{k} +{v:,}" for k, v in added.items() if v))
    if summary.packets == 0 and summary.damages:
        return 1  # nothing could be read
    return 0


def _setting_errors(args: argparse.Namespace) -> tuple[type[Exception], ...]:
    """The errors of the settings files this replay reads (each module loads only when its option is used)."""
    errors: list[type[Exception]] = []
    if not args.flows_only:  # the bundled rules and trend settings, unless --rules and --trend name others
        from detection.rules.loader import RuleError
        from detection.trend import TrendConfigError

        errors += [RuleError, TrendConfigError]
    if args.model:
        from detection.detectors.anomaly import ModelError

        errors.append(ModelError)
    if args.notify:
        from ingest.notify import NotifyConfigError

        errors.append(NotifyConfigError)
    if args.intel:
        from detection.intel import IntelConfigError

        errors.append(IntelConfigError)
    return tuple(errors)


def _rule_overrides(store: str) -> dict[str, dict[str, object]] | None:
    """Rules as the console's administrators tuned them for this store (console/state.py)."""
    import json

    from console.app import state_dir
    from console.state import OVERRIDES_FILE
    from detection.rules.loader import RuleError

    path = state_dir(store) / OVERRIDES_FILE
    if not path.exists():
        return None
    try:
        overrides: dict[str, dict[str, object]] = json.loads(path.read_text())
    except ValueError as exc:
        raise RuleError(f"{path}: not valid JSON: {exc}") from None
    return overrides


def _console(args: argparse.Namespace) -> int:
    from console.app import serve
    from ingest.store import StoreError
    from sensors.capture.seal import SealError

    try:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise OSError("--tls-cert and --tls-key go together")
        serve(args.store, args.host, args.port, [Path(r) for r in args.rules] if args.rules else None,
              args.secure_cookies, (Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None)
    except (StoreError, OSError, SealError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _user(args: argparse.Namespace) -> int:
    import getpass
    import os

    from console.app import state_dir
    from console.state import ConsoleState, StateError
    from ingest.store import store_uri

    state = ConsoleState(state_dir(store_uri(args.store)))
    try:
        if args.action == "list":
            for u in state.users():
                print(f"{u['username']:<20} {u['role']}")
            return 0
        password = os.environ.get("LIAOWANG_USER_PASSWORD")
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                print("liaowang: error: the passwords differ", file=sys.stderr)
                return 2
        if args.action == "add":
            state.add_user(args.name, password, args.role)
        else:
            state.set_password(args.name, password)
        state.audit(None, f"user_{args.action}", args.name, {"role": args.role} if args.action == "add" else None,
                    "cli")
    except StateError as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {'added as ' + args.role if args.action == 'add' else 'password changed'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import tempfile

    import pyarrow.parquet as pq

    from detection.detectors.anomaly import FlowAnomalyModel
    from ingest.replay import replay

    if not 0 < args.target_fpr < 0.5:
        print("liaowang: error: --target-fpr must be between 0 and 0.5", file=sys.stderr)
        return 2
    model_path = Path(args.model)
    if not model_path.parent.exists():
        print(f"liaowang: error: {model_path.parent}: no such directory", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="liaowang-train-") as tmp:
        try:
            replay(args.baseline, Path(tmp), rules=[], idle_timeout_s=args.idle_timeout,
                   active_timeout_s=args.active_timeout)
        except CaptureError as exc:
            print(f"liaowang: error: {exc}", file=sys.stderr)
            return 2
        flows = pq.read_table(Path(tmp) / "flows.parquet")
    model = FlowAnomalyModel(target_fpr=args.target_fpr).fit(flows)
    if not model.models_:
        print(f"liaowang: error: the baseline has {flows.num_rows} flows: too few in every traffic class "
              f"(at least {model.min_class_flows} needed)", file=sys.stderr)
        return 2
    model.save(model_path)
    classes = ", ".join(f"{k} {v:,}" + ("" if k in model.models_ else " (too few, not modelled)")
                        for k, v in model.baseline_flows_.items() if v)
    print(f"{model_path}: {flows.num_rows:,} baseline flows; per class: {classes}; "
          f"threshold at {args.target_fpr:.2%} false positives")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ingest.evaluate import evaluate

    shared = Path(args.shared) if args.shared else None
    if shared is not None and not shared.is_dir():
        print(f"liaowang: error: {shared}: no such directory", file=sys.stderr)
        return 2
    table = evaluate(shared).markdown()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sensors.generate.mixed import generate

    if args.packets <= 0:
        print("liaowang: error: --packets must be positive", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    made = generate(out, args.packets, seed=args.seed, duration_s=args.duration, profile=args.profile)
    print(f"{made.path}: {made.packets:,} packets, {made.flows_planned:,} flows planned, "
          f"{made.gtp_packets / max(made.packets, 1):.0%} GTP-U")
    return 0


def tune_malloc() -> None:
    """Keep freed memory in the heap instead of returning it to the kernel.

    Decoding allocates many arrays of a few hundred KiB per chunk; with glibc's
    defaults each is a fresh mmap whose pages fault in zeroed, costing ~10% of
    a replay in the kernel.  Memory stays bounded: the sizes repeat per chunk.
    Arrow allocates from the same heap (ARROW_DEFAULT_MEMORY_POOL, set on import
    of this module): its default allocator (mimalloc) hands
    freed pages back and faults them in again (a 1M-packet replay: ~0.3 CPU-s
    less in the kernel, 5-10% faster, peak memory 680 -> 600 MiB).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)
        libc.mallopt(m_trim_threshold, 512 << 20)
        libc.mallopt(m_top_pad, 64 << 20)
    except (OSError, AttributeError):  # not glibc: the defaults are fine
        pass


#: the commands defined in this module; the console's other modules add the rest (query, streams, evidence...)
OWN_COMMANDS = frozenset({"replay", "train", "evaluate", "generate", "console", "user"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser.  ``command``: the command to be run; when it is one of :data:`OWN_COMMANDS`,
    the other modules' commands are left out, so that a replay does not load the store, web and live-capture
    modules they import (before its decoders can begin)."""
    parser = argparse.ArgumentParser(prog="liaowang", description="Liaowang 5G network security situational awareness")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("replay", help="decode captures into flows.parquet and eve.json")
    p.add_argument("inputs", nargs="+", metavar="PCAP_OR_DIR", help="pcap/pcapng files (gzip ok), directories, globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--idle-timeout", type=float, default=120.0, metavar="S", help="flow idle timeout, seconds")
    p.add_argument("--max-flows", type=int, default=MAX_FLOWS, metavar="N",
                   help=f"flow table limit: beyond it the least recently seen flows end as 'evicted' "
                        f"(default {MAX_FLOWS:,}, ~5 KB each; 0: no limit)"),
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N",
                   help=f"5G/LTE session table limit: beyond it ended, then unanswered, then the longest idle "
                        f"sessions are forgotten (default {MAX_SESSIONS:,}); sessions.parquet keeps them"),
    p.add_argument("--active-timeout", type=float, default=1800.0, metavar="S", help="flow active timeout, seconds")
    p.add_argument("--chunk-mb", type=float, default=None, metavar="MB",
                   help=f"read buffer per chunk (default {REPLAY_CHUNK_BYTES >> 20:g} with --flows-only, else "
                        f"{DETECTION_CHUNK_BYTES >> 20:g}; each batch has a fixed cost, memory grows with it)")
    p.add_argument("--processes", type=int, default=None, choices=(1, 2, 3), metavar="{1,2,3}",
                   help="1: all in this process; 2: decode in a second one; 3: in two more "
                        "(default: 1 + cores, at most 3)")
    p.add_argument("--rules", action="append", metavar="PATH",
                   help="rule file or directory (repeatable; default: the bundled rules/)")
    p.add_argument("--no-rules", action="store_true", help="no detection (flows, signalling tables and sessions)")
    p.add_argument("--flows-only", action="store_true",
                   help="a flow meter, like nfstream: flows.parquet and eve.json alone; no detection, signalling "
                        "messages, sessions or posture (the fastest replay)")
    p.add_argument("--model", metavar="FILE", help="also score flows with an anomaly model (liaowang train)")
    p.add_argument("--notify", metavar="FILE", help="notification settings (YAML, docs/notifications.md): send "
                                                    "alerts and incidents to webhooks, group robots, syslog, email")
    p.add_argument("--intel", metavar="FILE", help="threat-intelligence feeds (YAML, docs/intel.md): STIX 2.1, "
                                                   "MISP or plain lists, matched against every packet")
    p.add_argument("--trend", metavar="FILE", help="trend-forecast settings and thresholds (YAML; default "
                                                   "rules/forecast/trend.yml): warn before a rate crosses its threshold")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--store", metavar="URI", help="also load the output into a store: a DuckDB store directory or "
                                                  "http(s)://elasticsearch:9200 (see `liaowang query`)")
    p.set_defaults(func=_replay)
    t = sub.add_parser("train", help="learn a network's normal flows into an anomaly model")
    t.add_argument("--baseline", nargs="+", required=True, metavar="PCAP_OR_DIR", help="benign captures")
    t.add_argument("--model", required=True, metavar="FILE", help="model file to write")
    t.add_argument("--target-fpr", type=float, default=0.001, metavar="RATE",
                   help="share of baseline flows the threshold lets through as anomalies (default 0.001)")
    t.add_argument("--idle-timeout", type=float, default=120.0, metavar="S", help="flow idle timeout, seconds")
    t.add_argument("--active-timeout", type=float, default=1800.0, metavar="S", help="flow active timeout, seconds")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="precision and recall per attack class on labelled captures")
    e.add_argument("--shared", metavar="DIR", help="the shared public corpus (its manifest.json labels benign sets)")
    e.add_argument("--out", metavar="FILE", help="also write the markdown table here")
    e.set_defaults(func=_evaluate)
    g = sub.add_parser("generate", help="write a deterministic mixed 5G/enterprise capture (scapy templates)")
    g.add_argument("--out", required=True, metavar="FILE", help="pcap file to write")
    g.add_argument("--packets", type=int, default=1_000_000, help="number of packets")
    g.add_argument("--seed", type=int, default=1, help="random seed (same seed, same bytes)")
    g.add_argument("--duration", type=float, default=300.0, metavar="S", help="capture span, seconds")
    g.add_argument("--profile", default="standard", choices=("standard", "short-flows"),
                   help="traffic mix: standard (~76 packets per flow) or short-flows (~19)")
    g.set_defaults(func=_generate)
    if command not in OWN_COMMANDS:
        from console import evidence, purge, query, report, stream

        query.add_parser(sub)
        stream.add_parsers(sub)
        evidence.add_parser(sub)
        purge.add_parser(sub)
        report.add_parser(sub)
    c = sub.add_parser("console", help="serve the SOC web console over a store")
    c.add_argument("--store", metavar="URI", help="DuckDB store directory or http(s)://elasticsearch:9200 "
                                                 "(default: $LIAOWANG_STORE or ~/.local/share/liaowang)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    c.add_argument("--rules", action="append", metavar="PATH", help="rule files or directories shown on the Rules "
                                                                    "page (default: the bundled rules/)")
    c.add_argument("--secure-cookies", action="store_true", help="mark session cookies Secure (behind a TLS proxy)")
    c.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain (with --tls-key)")
    c.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    c.set_defaults(func=_console)
    u = sub.add_parser("user", help="console users: add NAME --role ROLE, passwd NAME, list")
    u.add_argument("action", choices=("add", "passwd", "list"))
    u.add_argument("name", nargs="?", default="", help="user name")
    u.add_argument("--role", default="analyst", choices=("viewer", "analyst", "admin"))
    u.add_argument("--store", metavar="URI", help="the store whose console this is (users live beside it)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin "
                                                                 "(else $LIAOWANG_USER_PASSWORD, else a prompt)")
    u.set_defaults(func=_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if getattr(args, "command", "") == "user" and args.action != "list" and not args.name:
        parser.error("user add/passwd need a user name")
    if getattr(args, "idle_timeout", 1) <= 0 or getattr(args, "active_timeout", 1) <= 0:
        parser.error("timeouts must be positive")
    if getattr(args, "max_flows", 0) < 0:
        parser.error("--max-flows must be >= 0 (0: no limit)")
    if getattr(args, "max_sessions", 1) < 1:
        parser.error("--max-sessions must be >= 1")
    tune_malloc()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return int(args.func(args))


def run() -> None:
    """The ``liaowang`` console script: :func:`main` on the command line, then exit.

    A replay has written, flushed and closed everything when ``main`` returns; the interpreter's
    teardown would then spend ~25 ms (2% of a 1M-packet replay) freeing the heap object by object and
    unloading modules, so that process ends at once (interrupted, too: exit code 130 and a line, no
    traceback).  Other commands (servers, stores) exit normally.
    """
    argv = sys.argv[1:]
    if argv[:1] != ["replay"]:
        sys.exit(main(argv))
    try:
        code = main(argv)
    except KeyboardInterrupt:
        # leaving this block frees the replay's frames: its decoders stop and their files go (unfinished outputs
        # stay *.partial, never under their final names); then the exit below, which cannot wait forever on a
        # writer thread the interrupt caught as it started
        print("liaowang: interrupted", file=sys.stderr)
        code = 130
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
