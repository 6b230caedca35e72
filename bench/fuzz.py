"""Long fuzz run: millions of mutated packets through the whole pipeline, thousands of corrupted files.

Each round is one seed: ``--per-round`` mutants of the bundled captures' frames
(tests/fuzzing.py) replayed through decoding, pseudonymisation, the protocol
dissectors (tshark for NGAP), SBI, flows, every rule and detector and the
output sinks, as ``liaowang replay`` runs them.  A round that raises is
reported with its seed (once fixed, keep the breaking input in
tests/fuzz_regressions/).  Then corrupted copies of every bundled capture go through the readers
and the decoder.  Reported: packets and files fuzzed, failures, time, peak RSS.

    .venv/bin/python bench/fuzz.py [--packets 2000000] [--out bench/fuzz-results.md]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.detect import build_engine  # noqa: E402
from ingest.replay import run  # noqa: E402
from sensors.capture.source import CaptureError, read_frames  # noqa: E402
from sensors.decode import decode  # noqa: E402
from tests.fuzzing import MutantSource, Seeds, corrupt_file  # noqa: E402

PCAPS = ROOT / "pcaps" / "shared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--per-round", type=int, default=100_000, help="mutants per seed (default 100,000)")
    ap.add_argument("--files", type=int, default=50, help="corrupted copies per bundled capture (default 50)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "fuzz-results.md"))
    args = ap.parse_args()
    captures = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    seeds = Seeds(captures)
    failures: list[str] = []
    started = time.perf_counter()
    fuzzed = decode_errors = 0
    with tempfile.TemporaryDirectory(prefix="liaowang-fuzz-") as tmp:
        for seed in range(1, args.packets // args.per_round + 1):
            batches = max(args.per_round // 10_000, 1)
            try:
                summary = run(MutantSource(seeds, seed, batches, args.per_round // batches), Path(tmp) / str(seed),
                              build_engine(), processes=1)
                fuzzed += summary.packets
                decode_errors += sum(summary.decode_errors.values())
            except Exception:
                failures.append(f"mutant seed {seed}: {traceback.format_exc(limit=3)}")
            print(f"seed {seed}: {fuzzed:,} packets, {len(failures)} failures", flush=True)
        packet_s = time.perf_counter() - started
        rng = np.random.default_rng(1)
        files = file_errors = 0
        broken = Path(tmp) / "broken"
        t0 = time.perf_counter()
        for path in captures:
            data = path.read_bytes()
            for k in range(args.files):
                broken.write_bytes(corrupt_file(data, rng))
                files += 1
                try:
                    for frames in read_frames(str(broken)):
                        decode(frames)
                except CaptureError:
                    file_errors += 1
                except Exception:
                    failures.append(f"file {path.name} #{k}: {traceback.format_exc(limit=3)}")
        file_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["# Fuzzing", "", "`bench/fuzz.py` (see its docstring): mutated packets through the whole pipeline "
             "(decoding, pseudonymisation, PFCP/GTPv2-C/NGAP/Diameter dissectors, SBI HPACK, flows, rules, "
             "detectors, sinks) and corrupted capture files through the readers and the decoder.", "",
             "| input | fuzzed | failures | time | notes |", "|---|---:|---:|---:|---|",
             f"| mutated packets ({len(seeds):,} seed frames from {len(captures)} captures) | {fuzzed:,} | "
             f"{sum(f.startswith('mutant') for f in failures)} | {packet_s:.0f} s | {decode_errors:,} marked with "
             f"a decode error, none raised |",
             f"| corrupted capture files (cut, overwritten, bad lengths) | {files:,} | "
             f"{sum(f.startswith('file') for f in failures)} | {file_s:.0f} s | {file_errors:,} rejected with one "
             f"CaptureError (unusable header); the rest read up to the damage |", "",
             f"Peak RSS of the whole run: {rss_mb:,.0f} MB (bounded: batches of 10,000 mutants).", ""]
    lines += ["Failures:", "", *(f"```\n{f}```" for f in failures)] if failures else ["No failures.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
