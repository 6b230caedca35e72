"""Streaming benchmark: sensor -> Kafka (tansu) -> detection workers -> store, against replay.

Throughput: packets/s from the sensor's start to the last flow and alert in
the store (all bundled rules), with 1 and 2 workers, next to `liaowang
replay` on the same capture in the same run.  Latency: the sensor paced at
``--pps`` packets/s, one worker; per batch, the time from its first packet being
due (the sensor publishes it then) to its results being in the store (the
workers' histogram).

    .venv/bin/python bench/stream_bench.py [--capture FILE] [--pps 100000] [--out bench/stream-results.md]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kafka_fixtures import Broker, free_port, liaowang, stop  # noqa: E402

ENV = {"LIAOWANG_PSEUDONYM_KEY": "bench"}
#: BENCH_LOG=DEBUG: the workers log each checkpoint's phases and each batch's latency (in the run's w*.log)
LOG_LEVEL = os.environ.get("BENCH_LOG", "INFO")


def stored_flows(store: Path) -> int:
    from ingest.store.duck import DuckStore

    s = DuckStore(store)
    try:
        with s._connect(write=False) as con:
            return int(con.execute("SELECT count(*) FROM flows").fetchall()[0][0])
    except Exception:
        return 0
    finally:
        s.close()


def replay_run(capture: Path, tmp: Path) -> tuple[float, int]:
    out = tmp / "replay-out"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "console.cli", "replay", str(capture), "--out", str(out), "-q"],
                   check=True, cwd=ROOT, env={**os.environ, **ENV})
    seconds = time.perf_counter() - t
    import pyarrow.parquet as pq

    return seconds, pq.ParquetFile(out / "flows.parquet").metadata.num_rows


def stream_run(capture: Path, tmp: Path, workers: int, flows: int, pps: float | None = None,
               chunk_mb: float = 32.0) -> dict[str, float]:
    run = tmp / f"stream-{workers}-{pps or 'max'}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    broker = Broker(run)
    broker.start()
    ports = [free_port() for _ in range(workers)]
    level = "DEBUG" if pps else LOG_LEVEL  # paced: each batch's latency, exactly, from the log
    procs = [liaowang("detect", "--kafka", broker.bootstrap, "--store", str(run / "store"), "--group", "bench",
                      "--metrics-port", str(ports[i]), "--name", f"w{i}", "--log-level", level,
                      log=run / f"w{i}.log", env=ENV)
             for i in range(workers)]
    try:
        deadline = time.monotonic() + 60
        while not all("assigned" in (run / f"w{i}.log").read_text() for i in range(workers)):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not join")
            time.sleep(0.2)
        t = time.perf_counter()
        sensor = liaowang("sensor", "--pcap", str(capture), "--kafka", broker.bootstrap, "--spool", str(run / "spool"),
                          "--chunk-mb", str(chunk_mb), *(["--pps", str(pps)] if pps else []), log=run / "sensor.log",
                          env=ENV)
        sensor.wait()
        sensor_s = time.perf_counter() - t
        while stored_flows(run / "store") < flows:
            if time.perf_counter() - t > 600:
                raise RuntimeError("results never complete")
            time.sleep(0.1)
        seconds = time.perf_counter() - t
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics").read().decode()
    finally:
        for p in procs:
            stop(p)
        broker.stop()
    buckets = [(float(le), float(n)) for le, n in re.findall(
        r'liaowang_worker_detection_latency_seconds_bucket\{le="([0-9.e+]+)"\} ([0-9.e+]+)', metrics)]
    total = buckets[-1][1] if buckets else 0
    exact = [float(x) for i in range(workers) for line in re.findall(
        r"stored the results of \d+ batches, ([0-9. ]+) s after", (run / f"w{i}.log").read_text()) for x in line.split()]

    def quantile(q: float) -> float:  # nearest rank over the exact values when logged, else the bucket bound
        if exact:
            return sorted(exact)[max(0, -(-int(q * len(exact) * 1000) // 1000) - 1)]
        return next((le for le, n in buckets if n >= q * total), float("inf"))

    return {"seconds": seconds, "sensor_seconds": sensor_s, "p50": quantile(0.5), "p99": quantile(0.99),
            "max": max(exact, default=float("nan")), "first": exact[0] if exact else float("nan"),
            "batches": len(exact) or total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", default=str(ROOT / "bench/data/standard_1000000_300s.pcap"))
    ap.add_argument("--pps", type=float, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench/stream-results.md"))
    args = ap.parse_args()
    capture = Path(args.capture)
    if not capture.exists():
        subprocess.run([sys.executable, "-m", "console.cli", "generate", "--out", str(capture), "--seed", "1"],
                       check=True, cwd=ROOT)
    named = re.search(r"_(\d+)_", capture.name)  # `liaowang generate` names files by packet count
    packets = int(named.group(1)) if named else 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        replay_s, flows = replay_run(capture, tmp)
        one = stream_run(capture, tmp, 1, flows)
        two = stream_run(capture, tmp, 2, flows)
        paced = stream_run(capture, tmp, 1, flows, pps=args.pps)
    rows = [("liaowang replay", replay_s, None), ("sensor -> Kafka -> 1 worker -> store", one["seconds"], one),
            ("sensor -> Kafka -> 2 workers -> store", two["seconds"], two)]
    lines = [f"Capture `{capture.name}` ({packets:,} packets, {flows:,} flows), all bundled rules, "
             "tansu broker and DuckDB store on this 2-core machine, one run.", "",
             "| path | seconds | packets/s | vs replay |", "|---|---:|---:|---:|"]
    for name, s, _ in rows:
        lines.append(f"| {name} | {s:.2f} | {packets / s:,.0f} | {replay_s / s:.2f}x |")
    lines += ["", f"Paced at {args.pps:,.0f} packets/s, 1 worker, 32 MiB batches (the sensor's default for files; "
              f"{32 * 2**20 * packets / capture.stat().st_size / args.pps:.2f} s of traffic each): the time a batch's "
              f"first packet is due -> its flows and alerts in the store, over {paced['batches']:.0f} batches: "
              f"p50 {paced['p50']:.2f} s, p99 {paced['p99']:.2f} s (nearest rank), max {paced['max']:.2f} s; the first "
              f"batch {paced['first']:.2f} s (it includes the sensor's first connection to the broker); whole run "
              f"{paced['seconds']:.1f} s for {packets / args.pps:.1f} s of traffic."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
