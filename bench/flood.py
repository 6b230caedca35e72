"""Peak memory under a SYN flood from random sources: the flow table's cap at work.

Writes a capture of ``--packets`` TCP SYNs, each from its own random source
address and port (built with numpy: one template frame, addresses written in
place), replays it with `liaowang replay` as it comes (``--max-flows``
variants), and reports peak RSS and the flows each run wrote.

    .venv/bin/python bench/flood.py --packets 1000000 --out bench/flood-results.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensors.generate.flood import syn_flood

ROOT = Path(__file__).resolve().parent.parent


def run(capture: Path, out: Path, extra: list[str]) -> tuple[float, int, int, float]:
    """(peak RSS MB of the replay process, flows written, flows evicted, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "replay", str(capture), "--out", str(out), "-q",
                             "--processes", "1", "--chunk-mb", "4", *extra], cwd=ROOT,
                            env={"LIAOWANG_PSEUDONYM_KEY": "bench", "PATH": "/usr/bin:/bin"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"replay {extra} failed: exit {proc.returncode}")
    seconds = time.perf_counter() - start
    reasons = pq.read_table(out / "flows.parquet", columns=["expiration_reason"]).column(0)
    evicted = int(pc.sum(pc.equal(reasons, "evicted")).as_py() or 0)
    return usage.ru_maxrss / 1024, len(reasons), evicted, seconds


VARIANTS = [
    ("flows only, no cap (`--no-rules --max-flows 0`)", ["--no-rules", "--max-flows", "0"]),
    ("flows only, `--max-flows 100000`", ["--no-rules", "--max-flows", "100000"]),
    ("full detection, default cap (500,000)", []),
    ("full detection, `--max-flows 100000`", ["--max-flows", "100000"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="capture span")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "flood.pcap"
        syn_flood(capture, args.packets, args.seconds)
        for i, (label, extra) in enumerate(VARIANTS):
            peak, flows, evicted, seconds = run(capture, Path(tmp) / str(i), extra)
            rows.append(f"| {label} | {peak:,.0f} MB | {flows:,} | {evicted:,} | {seconds:.1f} s |")
            print(rows[-1], flush=True)
    report = "\n".join([
        f"# SYN flood from {args.packets:,} random sources ({args.seconds:g} s of capture)", "",
        "`bench/flood.py`: peak RSS of `liaowang replay --processes 1 --chunk-mb 4` (decoder, flow table,",
        "rules and detectors in one process; 4 MB batches as a live sensor makes them).", "",
        "| run | peak RSS | flows written | of them evicted | time |", "|---|---|---|---|---|", *rows, ""])
    if args.out:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
