"""Store benchmark: ingest rate and the console's dashboard queries at scale (DuckDB embedded store).

    .venv/bin/python bench/store_bench.py [--flows 10000000] [--alerts 100000]   (also run by bench/run.sh)

Rows are real replay output tiled to size: the flows of a replay of the
benchmark's standard capture (or of the bundled captures when it is absent) and
the alerts of a replay of the bundled captures, copied with fresh ids and times
shifted so the copies cover a week.  The peer for ingest is DuckDB itself
inserting the same Arrow batches into a bare table (no dedupe, no archive):
the ratio is what idempotence and the Parquet archive cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the store runs in a process of the liaowang command (replay --store, worker, console): its allocator settings,
# made on import before pyarrow's, and its heap tuning
from console.cli import tune_malloc  # noqa: E402, I001

tune_malloc()

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ingest.store.api import SCHEMAS, Condition, Query, prepare  # noqa: E402
from ingest.store.duck import DuckStore  # noqa: E402

DATA = ROOT / "bench" / "data"
WEEK_NS = 7 * 86400 * 10**9
BATCH_ROWS = 1_000_000
INGEST_RUNS = 3  # the median is reported (this machine's speed varies by ~20% from run to run)
#: what the console's hunt page lists (HUNT_COLUMNS in console/static/app.js)
HUNT_COLUMNS = ("first_seen", "plane", "src_ip", "src_port", "dst_ip", "dst_port", "ip_proto", "teid", "application_hint",
                "server_name", "bidirectional_packets", "bidirectional_bytes", "bidirectional_duration_ms")


def replay(captures: list[str], out: Path) -> Path:
    if not (out / "flows.parquet").exists():
        subprocess.run([str(ROOT / ".venv" / "bin" / "liaowang"), "replay", *captures, "--out", str(out), "-q"],
                       check=True)
    return out


def tiled(table: pa.Table, rows: int, id_column: str, time_columns: list[str]) -> list[pa.Table]:
    """``rows`` rows in batches: copies of ``table`` with new ids and shifted times covering a week."""
    copies = -(-rows // table.num_rows)
    step = WEEK_NS // copies
    out, made = [], 0
    for k in range(copies):
        t = table.slice(0, min(table.num_rows, rows - made))
        ids = np.arange(made, made + t.num_rows, dtype=np.int64)
        new_id = pa.array(ids) if pa.types.is_integer(t.schema.field(id_column).type) else \
            pc.cast(pa.array(ids), pa.string())
        t = t.set_column(t.schema.get_field_index(id_column), id_column, new_id)
        for c in time_columns:
            i = t.schema.get_field_index(c)
            shifted = pc.add(t[c].cast(pa.int64()), k * step).cast(t.schema.field(c).type)
            t = t.set_column(i, c, shifted)
        out.append(t)
        made += t.num_rows
    merged = pa.concat_tables(out).combine_chunks()
    return [merged.slice(i, BATCH_ROWS) for i in range(0, merged.num_rows, BATCH_ROWS)]


def timed(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float]:
    """(the first run, the median of the others): the store keeps partial sums of the flow files it has
    read once (ingest/store/filecache.py), as a console does between refreshes."""
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return walls[0], statistics.median(walls[1:])


def store_bench(n_flows: int = 10_000_000, n_alerts: int = 100_000) -> list[str]:
    standard = DATA / "standard_1000000_300s.pcap"
    flows_src = replay([str(standard)], DATA / "store-flows") if standard.exists() else \
        replay([str(ROOT / "pcaps")], DATA / "store-bundled")
    alerts_src = replay([str(ROOT / "pcaps")], DATA / "store-bundled")
    flows = prepare("flows", pq.read_table(flows_src / "flows.parquet"))
    alerts = prepare("alerts", pq.read_table(alerts_src / "alerts.parquet"))
    flow_batches = tiled(flows, n_flows, "flow_id", ["first_seen", "last_seen"])
    alert_batches = tiled(alerts, n_alerts, "alert_id", ["first_seen", "last_seen"])

    work = Path(tempfile.mkdtemp(prefix="liaowang-store-bench-"))
    try:
        ingests: list[float] = []
        for run in range(INGEST_RUNS):  # into a fresh store each time; the last one is queried
            store = DuckStore(work / f"store-{run}")
            start = time.perf_counter()
            for b in flow_batches:
                store.write("flows", b)
            ingests.append(time.perf_counter() - start)
            if run < INGEST_RUNS - 1:
                store.close()
                shutil.rmtree(work / f"store-{run}")
        ingest_s = statistics.median(ingests)
        for b in alert_batches:
            store.write("alerts", b)
        again = time.perf_counter()
        added = store.write("flows", flow_batches[0])
        redeliver_s = time.perf_counter() - again

        con = duckdb.connect(str(work / "bare.duckdb"))
        con.register("empty_", SCHEMAS["flows"].empty_table())
        con.execute("CREATE TABLE flows AS SELECT * FROM empty_")
        start = time.perf_counter()
        for b in flow_batches:
            con.register("b_", b)
            con.execute("INSERT INTO flows SELECT * FROM b_")
            con.unregister("b_")
        bare_s = time.perf_counter() - start
        con.close()

        first = flow_batches[0]["first_seen"][0].as_py()
        end = first + dt.timedelta(days=7)
        day = (end - dt.timedelta(days=1), end)
        urgent = Condition("level", "in", ["red", "orange"])
        queries: dict[str, Callable[[], Any]] = {
            "histogram, week, 1 h buckets": lambda: store.histogram(first, end, 3600),
            "top talkers by bytes, week": lambda: store.top("talkers", "bytes", first, end),
            "top ports by flows, week": lambda: store.top("ports", "flows", first, end),
            "5G plane mix, week": lambda: store.plane_mix(first, end),
            "alerts, level red+orange, newest 50": lambda: store.search(Query("alerts", [urgent])),
            "flows of one IP, last day, 50 (the hunt page's columns)": lambda: store.search(Query(
                "flows", ip=str(flows["dst_ip"][0]), start=day[0], end=day[1], columns=HUNT_COLUMNS)),
            "flows of one IP, last day, 50 (all 72 columns)": lambda: store.search(Query(
                "flows", ip=str(flows["dst_ip"][0]), start=day[0], end=day[1])),
            "histogram, last day, 5 min buckets": lambda: store.histogram(*day, 300),
        }
        walls = {name: timed(fn) for name, fn in queries.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = sum(b.num_rows for b in flow_batches)
    lines = [
        "### store (DuckDB + Parquet, embedded)", "",
        f"{n:,} flow rows ({flows.num_rows:,} replayed flows tiled over a week) and "
        f"{sum(b.num_rows for b in alert_batches):,} alerts, batches of {BATCH_ROWS:,} rows; ingest: median of "
        f"{INGEST_RUNS} runs into a fresh store ({', '.join(f'{s:.1f}' for s in ingests)} s).", "",
        "| ingest | seconds | rows/s | vs bare DuckDB insert |", "|---|---:|---:|---:|",
        f"| liaowang store (dedupe + day-partitioned Parquet archive) | {ingest_s:.1f} | {n / ingest_s:,.0f} | "
        f"{bare_s / ingest_s:.2f}x |",
        f"| bare DuckDB INSERT of the same batches | {bare_s:.1f} | {n / bare_s:,.0f} | 1.00x |",
        f"| re-delivered batch ({flow_batches[0].num_rows:,} rows, {added} new) | {redeliver_s:.2f} | "
        f"{flow_batches[0].num_rows / redeliver_s:,.0f} | |", "",
        "| dashboard query | first, ms | then (median of 4), ms |", "|---|---:|---:|",
        *[f"| {name} | {cold * 1000:,.0f} | {warm * 1000:,.0f} |" for name, (cold, warm) in walls.items()], "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=10_000_000)
    ap.add_argument("--alerts", type=int, default=100_000)
    args = ap.parse_args()
    print("\n".join(store_bench(args.flows, args.alerts)))


if __name__ == "__main__":
    main()
