"""Side-by-side benchmark: `liaowang replay` vs nfstream on one generated capture.

    bash bench/run.sh            # 1M packets, 3 runs each, writes bench/results.md
    bash bench/run.sh --large    # also a 10x file, to show that memory stays flat

Both tools run as whole processes on the same file in the same session, runs
alternating; reported: median wall time, packets/s, peak memory (RSS summed
over the process and its children, sampled every 20 ms), and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
NFSTREAM = """
import sys
from nfstream import NFStreamer
n = sum(1 for _ in NFStreamer(source=sys.argv[1], statistical_analysis=True, n_dissections=0, decode_tunnels=True))
print(n)
"""


#: the project's packages, as scripts/setup.sh compiles them
PACKAGES = ("sensors", "detection", "ingest", "console")


def tree_rss_kb(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def warm_page_cache(path: Path) -> None:
    """Read the capture once before each timed run, whichever tool it is for: this machine's kernel
    pages out memory it sees as cold (DAMON reclaim), so between runs parts of an 800 MB capture
    may have left the page cache, and a run would then time the disk as well, by chance."""
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def measure(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree (KiB), stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{err}")
    return wall, peak, out


def ensure_capture(packets: int, profile: str, duration_s: float = 300.0) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{profile}_{packets}_{duration_s:.0f}s.pcap"
    if not path.exists():
        subprocess.run([str(ROOT / ".venv" / "bin" / "liaowang"), "generate", "--packets", str(packets), "--seed", "1",
                        "--profile", profile, "--duration", str(duration_s), "--out", str(path)], check=True)
    return path


def compare(capture: Path, packets: int, runs: int, peers_python: str) -> list[str]:
    out_dir = DATA / "out"
    liaowang = [str(ROOT / ".venv" / "bin" / "liaowang"), "replay", str(capture), "--out", str(out_dir), "-q"]
    tools = {
        "liaowang (all bundled rules)": liaowang,
        "liaowang --no-rules": [*liaowang, "--no-rules"],
        "liaowang --flows-only": [*liaowang, "--flows-only"],
        "liaowang --no-rules --processes 2": [*liaowang, "--no-rules", "--processes", "2"],
        "liaowang --no-rules --processes 1": [*liaowang, "--no-rules", "--processes", "1"],
        "nfstream 6.6 (flows + statistics)": [peers_python, "-c", NFSTREAM, str(capture)],
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
    nf_flows = 0
    for _ in range(runs):
        for name, cmd in tools.items():
            warm_page_cache(capture)
            wall, rss, out = measure(cmd)
            results[name].append((wall, rss))
            if name.startswith("nfstream"):
                nf_flows = int(out.strip())
            print(f"{capture.name:28} {name:34} {wall:6.2f} s {rss / 1024:7.0f} MiB", file=sys.stderr)
    import pyarrow.parquet as pq

    flows = pq.read_metadata(out_dir / "flows.parquet").num_rows
    base = statistics.median(w for w, _ in results["nfstream 6.6 (flows + statistics)"])
    lines = [
        f"`{capture.name}`: {packets:,} packets, {capture.stat().st_size / 2**20:,.0f} MiB, ~20% GTP-U; "
        f"flows: Liaowang {flows:,}, nfstream {nf_flows:,}. Median of {runs} alternating runs.",
        "",
        "| tool | seconds | packets/s | vs nfstream | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        wall = statistics.median(w for w, _ in r)
        lines.append(f"| {name} | {wall:.2f} | {packets / wall:,.0f} | {base / wall:.2f}x | "
                     f"{max(m for _, m in r) / 1024:,.0f} |")
    return lines + [""]


def control_plane(capture: Path) -> list[str]:
    """Message dissection rates (messages/s, one process, CPU-bound Python per message): the PFCP path on
    the capture's PFCP, the NGAP path (tshark) on a generated registration storm, then the session table."""
    import pyarrow as pa

    from detection.sessions import SessionTable, message_rows
    from ingest.control import decode_messages
    from ingest.privacy import Pseudonymizer
    from ingest.workers import packet_batches
    from sensors.capture.source import CaptureFiles
    from sensors.generate.attacks import write_pcap
    from sensors.generate.control_plane import registration_flood

    ngap_capture = write_pcap(DATA / "ngap_storm.pcap", [(1_700_000_000 + t, f)
                                                     for t, f in registration_flood(n=20_000, seconds=60.0)])
    keys = Pseudonymizer(b"bench")
    lines = ["### control plane", "", "| path | messages | seconds | messages/s |", "|---|---:|---:|---:|"]
    for label, path, name in (("PFCP IEs", capture, "pfcp"), ("NGAP/NAS via tshark", ngap_capture, "ngap")):
        batches = [next(iter(o.values())) for o, _ in packet_batches(CaptureFiles([str(path)], 1 << 26), [], None)]
        start = time.perf_counter()
        tables = [pa.Table.from_batches([o[f"proto.{name}"]]) for b in batches
                  if f"proto.{name}" in (o := decode_messages(b, keys))]
        wall = time.perf_counter() - start
        n = sum(t.num_rows for t in tables)
        lines.append(f"| {label} | {n:,} | {wall:.2f} | {n / wall:,.0f} |")
        sessions = SessionTable()
        start = time.perf_counter()
        for t in tables:
            sessions.update(message_rows({name: t}))
        wall = time.perf_counter() - start
        lines.append(f"| session table ({name}) | {n:,} | {wall:.2f} | {n / wall:,.0f} |")
    return lines + [""]


def earlier_sections(headings: tuple[str, ...]) -> list[str]:
    """The sections of the last results.md under ``headings``, for the benchmarks this run skipped."""
    path = ROOT / "bench" / "results.md"
    if not path.exists():
        return []
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            keep = line.startswith(headings)
            if keep:
                kept += [line, "", "(from an earlier run: this one skipped it)"]
                continue
        if keep and not line.startswith("(from an earlier run") and (line or kept[-1]):  # no blank runs
            kept.append(line)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profiles", default="standard,short-flows")
    ap.add_argument("--peers-python", default=str(ROOT / "bench" / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--large", action="store_true", help="also replay a 10x capture (Liaowang only: memory)")
    ap.add_argument("--no-store", action="store_true", help="skip the store and console benchmarks (10M flow rows)")
    args = ap.parse_args()
    # with PYTHONDONTWRITEBYTECODE set (as here) a module edited since set-up would be compiled anew at every
    # start (~2-5 ms each) and timed with the rest: compiled once here, as scripts/setup.sh does
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "compileall", "-q", *PACKAGES], cwd=ROOT, check=True)
    lines = [f"Whole process, same machine, same session ({os.cpu_count()} cores); "
             "`liaowang generate --seed 1 --profile P`.", ""]
    for profile in filter(None, args.profiles.split(",")):
        capture = ensure_capture(args.packets, profile)
        lines += [f"### profile `{profile}`", "", *compare(capture, args.packets, args.runs, args.peers_python)]
    lines += control_plane(ensure_capture(args.packets, "standard"))
    if not args.no_store:
        # a process of its own, set up as the liaowang command sets itself up (Arrow's allocator is chosen
        # when pyarrow is first imported, which this process has done already)
        store = subprocess.run([sys.executable, str(ROOT / "bench" / "store_bench.py")], check=True,
                               capture_output=True, text=True)
        lines += store.stdout.splitlines()
        from console_bench import console_bench

        lines += console_bench()
    else:
        lines += earlier_sections(("### store", "### console"))
    if not args.large:
        lines += earlier_sections(("### 10x",))
    if args.large:
        # ten times the packets over ten times the span: the same traffic, for longer
        big = ensure_capture(10 * args.packets, "standard", 3000.0)
        cmd = [str(ROOT / ".venv" / "bin" / "liaowang"), "replay", str(big), "--out", str(DATA / "out"), "-q"]
        wall, rss, _ = measure(cmd)
        lines += ["### 10x capture (memory stays flat)", "",
                  f"`{big.name}`: {big.stat().st_size / 2**30:.1f} GiB; Liaowang {wall:.1f} s, "
                  f"{10 * args.packets / wall:,.0f} packets/s, peak RSS {rss / 1024:,.0f} MiB.", ""]
    table = "\n".join(lines)
    (ROOT / "bench" / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
