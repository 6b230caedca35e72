"""Peak memory under a SYN flood from random sources: the flow table's cap at work.

Writes a capture of ``--packets`` TCP SYNs, each from its own random source
address and port (built with numpy: one template frame, addresses written in
place), replays it with `liaowang replay` as it comes (``--max-flows``
variants), and reports peak RSS, the flows each run wrote, and what the rule
counters and detectors shed (from the run's EVE stats event).

    .venv/bin/python bench/flood.py --packets 1000000 --out bench/flood-results.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensors.generate.flood import syn_flood

ROOT = Path(__file__).resolve().parent.parent


def run(capture: Path, out: Path, extra: list[str]) -> tuple[float, int, int, dict[str, int], float]:
    """(peak RSS MB of the replay process, flows written, flows evicted, what detection shed, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "replay", str(capture), "--out", str(out), "-q",
                             "--processes", "1", "--chunk-mb", "4", *extra], cwd=ROOT,
                            env={"LIAOWANG_PSEUDONYM_KEY": "bench", "PATH": "/usr/bin:/bin"})
    # the replay's own high-water mark (VmHWM), read while it runs: a child's ru_maxrss would count
    # this process's memory at the fork too
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"replay {extra} failed: exit {proc.returncode}")
    seconds = time.perf_counter() - start
    reasons = pq.read_table(out / "flows.parquet", columns=["expiration_reason"]).column(0)
    evicted = int(pc.sum(pc.equal(reasons, "evicted")).as_py() or 0)
    stats = [json.loads(line) for line in (out / "eve.json").read_text().splitlines() if '"stats"' in line]
    shed = stats[-1]["stats"]["detect"].get("shed", {}) if stats else {}
    return peak_kb / 1024, len(reasons), evicted, shed, seconds


VARIANTS = [
    ("flows only, no cap (`--no-rules --max-flows 0`)", ["--no-rules", "--max-flows", "0"]),
    ("flows only, default cap (500,000)", ["--no-rules"]),
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
            peak, flows, evicted, shed, seconds = run(capture, Path(tmp) / str(i), extra)
            rules = f"{shed['rule_groups']:,} ({shed['rule_events']:,} events)" if shed else "—"
            detectors = f"{shed['detector_events']:,}" if shed else "—"
            rows.append(f"| {label} | {peak:,.0f} MB | {flows:,} | {evicted:,} | {rules} | {detectors} | {seconds:.1f} s |")
            print(rows[-1], flush=True)
    report = "\n".join([
        f"# SYN flood from {args.packets:,} random sources ({args.seconds:g} s of capture)", "",
        "`bench/flood.py`: peak RSS of `liaowang replay --processes 1 --chunk-mb 4` (decoder, flow table,",
        "rules and detectors in one process; 4 MB batches as a live sensor makes them).", "",
        "| run | peak RSS | flows written | of them evicted | rule counts shed | detector events shed | time |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    if args.out:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
