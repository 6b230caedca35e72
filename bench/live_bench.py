"""Live-capture benchmark: packets sent by tcpreplay onto a veth pair vs. captured, and kernel drops.

For each rate, up to tcpreplay's top speed here, ``liaowang sensor --iface``
runs the whole pipeline (decoding, flows, all bundled rules and detectors,
output files) while tcpreplay sends; then it is stopped with SIGTERM and
finishes what it captured.  Side by side, in the same run: dumpcap (Wireshark's
libpcap capture engine) writing to /dev/null, capture only, no decoding.

Reported per rate: packets sent and the rate tcpreplay achieved, packets
captured and dropped by the kernel, the time the sensor needed after the last
packet to finish (its backlog), and CPU: the sensor's process tree's CPU
seconds less an idle run's, per 100k packets (= cores busy per 100k packets/s).

At top speed, two more rows: the sensor keeping every packet as well
(``--retain``: rolling pcapng files with the flow index, default limits) and
dumpcap writing pcapng to a file.

Captures: 64-byte UDP frames over 10,000 flows (the highest packet rate
tcpreplay reaches) and the generated standard mix (858 bytes per packet on
average, ~20% GTP-U).

    .venv/bin/python bench/live_bench.py [--out bench/live-results.md]   (root: it makes network namespaces)
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402

DATA = ROOT / "bench" / "data"


def small_frames(path: Path, count: int = 1_000_000, flows: int = 10_000) -> Path:
    """64-byte Ethernet/IPv4/UDP frames, ``flows`` 5-tuples in a fixed pseudo-random order, 1 us apart."""
    if path.exists():
        return path
    rng = np.random.default_rng(1)
    frame = bytes.fromhex("020000000002" "020000000001" "0800"  # Ethernet
                          "45000032000040004011" "0000" "0a000001" "0a010001"  # IPv4, 50 bytes
                          "0000" "0035" "001e" "0000") + b"q" * 22  # UDP to port 53, 22 bytes of payload
    records = np.zeros((count, 16 + len(frame)), dtype=np.uint8)
    records[:, 16:] = np.frombuffer(frame, dtype=np.uint8)
    flow = rng.integers(0, flows, count)
    records[:, 16 + 28] = (flow >> 8).astype(np.uint8)  # source address 10.0.x.y
    records[:, 16 + 29] = (flow & 0xFF).astype(np.uint8)
    port = 1024 + flow
    records[:, 16 + 34] = (port >> 8).astype(np.uint8)
    records[:, 16 + 35] = (port & 0xFF).astype(np.uint8)
    us = np.arange(count, dtype=np.int64)
    header = np.zeros((count, 4), dtype="<u4")
    header[:, 0] = 1_700_000_000 + us // 1_000_000
    header[:, 1] = us % 1_000_000
    header[:, 2] = header[:, 3] = len(frame)
    records[:, :16] = header.view(np.uint8).reshape(count, 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
        f.write(records.tobytes())
    return path


def standard_capture() -> Path:
    path = DATA / "standard_1000000_300s.pcap"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "console.cli", "generate", "--out", str(path), "--seed", "1"],
                       check=True, cwd=ROOT)
    return path


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_liaowang(wire: netns.Wire, capture: Path | None, rate: float | None, limit: int, tmp: Path,
                 retain: bool = False) -> dict[str, float]:
    log = tmp / "sensor.log"
    cpu0 = children_cpu()
    kept = tmp / "kept"
    shutil.rmtree(kept, ignore_errors=True)
    proc = subprocess.Popen(wire.in_receiver(sys.executable, "-m", "console.cli", "sensor", "--iface",
                                             wire.receiver_if, "--out", str(tmp / "out"),
                                             *(["--retain", str(kept)] if retain else [])),
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    while f"capturing on {wire.receiver_if} (" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    cpu1 = children_cpu()
    sent = wire_send(wire, capture, rate, limit)
    sender_cpu = children_cpu() - cpu1  # tcpreplay's (reaped); the sensor's comes when it is
    t_last = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    finish_s = time.perf_counter() - t_last
    text = log.read_text()
    got = re.search(r"kernel saw ([\d,]+), dropped ([\d,]+)", text)
    captured = re.search(r"^\s+packets\s+([\d,]+)", text, re.M)
    assert got and captured, text
    return {"sent": sent.packets, "pps": sent.pps, "captured": _n(captured.group(1)), "drops": _n(got.group(2)),
            "finish_s": finish_s, "cpu_s": children_cpu() - cpu0 - sender_cpu}


def run_dumpcap(wire: netns.Wire, capture: Path, rate: float | None, limit: int, tmp: Path,
                write: bool = False) -> dict[str, float]:
    log = tmp / "dumpcap.log"
    target = ["-w", str(tmp / "dumpcap.pcapng")] if write else ["-P", "-w", "/dev/null"]
    proc = subprocess.Popen(wire.in_receiver("dumpcap", "-i", wire.receiver_if, *target, "-B", "256"),
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    while "Capturing on" not in log.read_text():
        time.sleep(0.05)
    time.sleep(0.5)  # it says so before the capture is open
    cpu0 = children_cpu()
    sent = wire_send(wire, capture, rate, limit)
    sender_cpu = children_cpu() - cpu0
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    got = re.search(r"received/dropped on interface '[^']*': (\d+)/(\d+)", log.read_text())
    assert got, log.read_text()
    return {"sent": sent.packets, "pps": sent.pps, "captured": int(got.group(1)) - int(got.group(2)),
            "drops": int(got.group(2)), "finish_s": 0.0, "cpu_s": children_cpu() - cpu0 - sender_cpu}


def wire_send(wire: netns.Wire, capture: Path | None, rate: float | None, limit: int) -> netns.TcpreplayResult:
    if capture is None:  # the idle baseline
        time.sleep(1.0)
        return netns.TcpreplayResult(0, 0, 0.0, 0.0)
    cmd = ["ip", "netns", "exec", wire.sender_ns, "tcpreplay", "-i", wire.sender_if, "--limit", str(limit),
           *(["--pps", str(rate)] if rate else ["--topspeed"]), str(capture)]
    return netns.TcpreplayResult.parse(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def _n(text: str) -> int:
    return int(text.replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "live-results.md"))
    ap.add_argument("--seconds", type=float, default=8.0, help="traffic per paced rate (default 8)")
    args = ap.parse_args()
    if netns.available():
        print(f"live_bench: {netns.available()}", file=sys.stderr)
        return 2
    small, standard = small_frames(DATA / "small_64B_1000000.pcap"), standard_capture()
    wire = netns.Wire.create("bench")
    rows: list[tuple[str, str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="liaowang-live-bench-") as tmp:
            idle = run_liaowang(wire, None, None, 0, Path(tmp))["cpu_s"]
            plan: list[tuple[str, Path, float | None]] = [
                ("64 B frames", small, 50_000), ("64 B frames", small, 100_000), ("64 B frames", small, 200_000),
                ("64 B frames", small, None), ("standard mix", standard, None)]
            for name, capture, rate in plan:
                limit = int(rate * args.seconds) if rate else 1_000_000
                tools: list[tuple[str, Callable[..., dict[str, float]], dict[str, bool]]] = [
                    ("liaowang sensor (full pipeline)", run_liaowang, {}),
                    ("dumpcap (capture only)", run_dumpcap, {})]
                if rate is None:  # keeping every packet as well, against dumpcap writing pcapng
                    tools += [("liaowang sensor + packet retention", run_liaowang, {"retain": True}),
                              ("dumpcap writing pcapng (capture only)", run_dumpcap, {"write": True})]
                for tool, fn, options in tools:
                    r = fn(wire, capture, rate, limit, Path(tmp), **options)
                    if tool.startswith("liaowang"):
                        r["cpu_s"] = max(r["cpu_s"] - idle, 0.0)
                    label = f"{name}, {'top speed' if rate is None else f'{rate:,.0f} pps'}"
                    rows.append((label, tool, r))
                    print(label, tool, r, flush=True)
    finally:
        wire.delete()
    lines = ["# Live capture benchmark", "",
             "`bench/live_bench.py`: tcpreplay sends onto a veth pair (network namespaces); the sensor captures the "
             "other end with the default configuration (AF_PACKET TPACKET_V3 ring 256 MB, 8 MB batches, up to "
             "1 GB of captured batches waiting for decoders) and runs the whole pipeline with all bundled rules. "
             "dumpcap runs side by side on the same traffic, capturing only. tcpreplay itself takes one of the "
             "machine's two cores at top speed.", "",
             "| traffic | tool | sent | achieved pps | captured | kernel drops | finish after last packet | "
             "CPU s per 100k packets |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, tool, r in rows:
        per100k = r["cpu_s"] / r["sent"] * 100_000 if r["sent"] else 0.0
        lines.append(f"| {label} | {tool} | {int(r['sent']):,} | {r['pps']:,.0f} | {int(r['captured']):,} | "
                     f"{int(r['drops']):,} | {r['finish_s']:.1f} s | {per100k:.2f} |")
    lines += ["", f"Idle sensor (start, no traffic, stop): {idle:.2f} CPU s, subtracted from the sensor's rows. "
              "CPU seconds per 100k packets is also the number of cores the sensor keeps busy per 100k packets/s "
              "sustained.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
