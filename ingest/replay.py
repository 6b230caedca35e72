"""``liaowang replay``: capture files -> packets -> flows -> flows.parquet + eve.json.

The embedded, in-process pipeline: each stage is table -> table, the same code
that the scale-out deployment runs behind Kafka.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa

from detection.flows.assembler import FlowAssembler
from detection.flows.export import APP_NAMES
from detection.flows.keys import project
from detection.flows.schema import FLOW_SCHEMA
from ingest.sinks import EveSink, ParquetSink
from ingest.workers import BatchStats, can_fork, packet_batches, packet_batches_forked
from sensors.capture.source import DEFAULT_CHUNK_BYTES, Damage, expand_inputs, order_by_time
from sensors.schema import DecodeStatus, TunnelType


@dataclass
class ReplaySummary:
    files: int = 0
    flows: int = 0
    seconds: float = 0.0
    traffic: BatchStats = field(default_factory=BatchStats)
    damages: list[Damage] = field(default_factory=list)

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
            "capture": {"files": self.files, "packets": self.packets, "bytes": self.bytes},
            "decoder": {"errors": self.decode_errors, "protocols": self.protocols, "tunnels": self.tunnels},
            "flow": {"total": self.flows},
            "damage": [{"file": d.path, "offset": d.offset, "reason": d.reason} for d in self.damages],
            "uptime_s": round(self.seconds, 3),
        }


def replay(
    inputs: list[str],
    out_dir: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    idle_timeout_s: float = 120.0,
    active_timeout_s: float = 1800.0,
    progress: Callable[[ReplaySummary, int, int], None] | None = None,
    processes: int = 2,
) -> ReplaySummary:
    """Run the embedded pipeline; raises CaptureError before writing anything if an input is unusable.

    With ``processes=2`` (and a fork-capable machine with 2+ cores) decoding runs
    in a second process; the output is identical either way.
    """
    files = order_by_time(expand_inputs(inputs))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ReplaySummary(files=len(files))
    started = time.perf_counter()
    sizes = [Path(f).stat().st_size for f in files]
    flows = FlowAssembler(idle_timeout_s, active_timeout_s)
    flow_sink = ParquetSink(out_dir / "flows.parquet", FLOW_SCHEMA)
    eve = EveSink(out_dir / "eve.json")

    # one writer thread: Parquet encoding and the EVE string kernels run in Arrow's
    # C++ without the GIL, overlapping the next batch's flow work; one write in flight
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liaowang-sink")
    pending: list[Future[None]] = []

    def write(table: pa.Table) -> None:
        flow_sink.write(table)
        eve.write_flows(table)

    def emit(table: pa.Table) -> None:
        while pending:
            pending.pop().result()
        if table.num_rows:
            pending.append(writer.submit(write, table))

    forked = processes >= 2 and can_fork()
    source = packet_batches_forked if forked else packet_batches
    for keyed, stats in source(files, chunk_bytes, summary.damages, project):
        summary.traffic.add(stats)
        emit(flows.update(keyed))
        if progress is not None:
            summary.seconds = time.perf_counter() - started
            done = sum(sizes[: stats.file_index]) + min(stats.file_offset, sizes[stats.file_index])
            progress(summary, done, sum(sizes))
    emit(flows.flush())
    emit(FLOW_SCHEMA.empty_table())  # waits for the last write
    writer.shutdown()
    summary.flows = flows.flows_exported
    summary.seconds = time.perf_counter() - started
    last = summary.traffic.last_ts_ns or 0
    eve.write_stats(dt.datetime.fromtimestamp(last / 1e9, tz=dt.UTC), summary.as_stats())
    flow_sink.close()
    eve.close()
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


def format_summary(s: ReplaySummary, extra: list[tuple[str, str]] | None = None) -> str:
    rows = [
        ("files", f"{s.files}"),
        ("packets", f"{s.packets:,}"),
        ("bytes", f"{s.bytes:,}"),
        ("flows", f"{s.flows:,}"),
        ("time", f"{s.seconds:.2f} s"),
        ("packets/s", f"{s.packets_per_second:,.0f}"),
        ("decode errors", ", ".join(f"{k} {v:,}" for k, v in s.decode_errors.items()) or "none"),
        ("protocols", ", ".join(f"{k} {v:,}" for k, v in list(s.protocols.items())[:12]) or "none"),
        ("tunnelled packets", ", ".join(f"{k} {v:,}" for k, v in s.tunnels.items()) or "none"),
    ]
    for d in s.damages:
        rows.append(("damaged file", f"{d.path} at byte {d.offset}: {d.reason}"))
    rows += extra or []
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

