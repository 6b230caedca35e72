"""Time from the first packet of a red-level attack on the wire to its webhook being received.

A paced replay, as a tap would deliver it: tcpreplay sends a capture at its
own timing onto a veth pair; ``liaowang sensor --iface`` (default settings,
every bundled rule and detector) captures the other end with ``--notify``
routing red alerts to a webhook, a real HTTP server on loopback.

The capture: the generated standard mix (``liaowang generate``, 5G core and
enterprise traffic, ~20% GTP-U) as background at ``--pps`` packets/s, and in
it a red-level attack: a rogue host on N4 deletes a PFCP session the SMF set
up (one packet; ``detection/detectors/pfcp_session.py`` grades it red).  The
attack's packet leaves tcpreplay at ``t_send`` = tcpreplay's start + its
offset in the capture; the webhook server records ``t_received``.  Reported
per run: ``t_received - t_send``, and the notifier's own share (decision to
delivery, ``latency_ms`` in its record).  Target (issue 10): under 5 s.

    .venv/bin/python bench/notify_bench.py [--runs 3] [--out bench/notify-results.md]   (root: veth pair)
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from scapy.utils import PcapReader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sensors.generate.attacks import write_pcap  # noqa: E402
from sensors.generate.scenarios import N4_ATTACKER, n4_attack  # noqa: E402
from tests import netns  # noqa: E402
from tests.receivers import HttpReceiver  # noqa: E402

ATTACK_AT_S = 20.0  # offset of the rogue deletion in the capture


def build_capture(tmp: Path, pps: float, seconds: float) -> tuple[Path, float]:
    """Background mix with the attack in it; returns the capture and the attack packet's offset (s)."""
    background = tmp / "background.pcap"
    subprocess.run([sys.executable, "-m", "console.cli", "generate", "--out", str(background), "--packets",
                    str(int(pps * seconds)), "--duration", str(seconds), "--seed", "7"], check=True, cwd=ROOT,
                   capture_output=True)
    frames = []
    with PcapReader(str(background)) as reader:
        for p in reader:
            frames.append((float(p.time), bytes(p)))
    t0 = frames[0][0]
    setup = n4_attack(t0 + 2.0)
    deletion = setup[-1][1]  # the rogue node's Session Deletion Request
    frames += setup[:4] + [(t0 + ATTACK_AT_S, deletion)]  # the SMF's association and session, then the attack
    frames.sort(key=lambda f: f[0])
    path = tmp / "paced.pcap"
    write_pcap(path, frames)
    return path, ATTACK_AT_S


def one_run(wire: netns.Wire, capture: Path, attack_offset_s: float, tmp: Path) -> dict[str, float]:
    receiver = HttpReceiver()
    notify = tmp / "notify.yml"
    notify.write_text(yaml.safe_dump({"rate_per_minute": 600, "channels": {"soc": {"type": "webhook", "url": receiver.url()}},
                                      "routes": [{"kinds": ["alert"], "levels": ["red"], "channels": ["soc"]}]}))
    out, log = tmp / "out", tmp / "sensor.log"
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "sensor", "--iface", wire.receiver_if, "--out", str(out),
                             "--notify", str(notify)], cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        while f"capturing on {wire.receiver_if} (" not in log.read_text():
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.05)
        started: list[float] = []

        def send() -> None:
            started.append(time.time())
            wire.replay(str(capture), topspeed=False)  # at the capture's own timing

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + attack_offset_s + 60
        hit = None
        while hit is None and time.monotonic() < deadline:
            hit = next((r for r in receiver.received if r.body.get("src") == N4_ATTACKER), None)
            time.sleep(0.01)
        sender.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        receiver.close()
    if hit is None:
        raise RuntimeError("the attack's alert never reached the webhook: " + log.read_text()[-2000:])
    record = pq.read_table(out / "notifications.parquet").to_pylist()
    mine = next(r for r in record if r["subject_id"] == hit.body["id"])
    return {"end_to_end_s": hit.at - (started[0] + attack_offset_s), "notifier_ms": mine["latency_ms"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pps", type=float, default=5000.0, help="background packets/s")
    ap.add_argument("--seconds", type=float, default=40.0, help="capture span")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "notify-results.md")
    args = ap.parse_args()
    if reason := netns.available():
        print(f"notify_bench: {reason}", file=sys.stderr)
        return 2
    wire = netns.Wire.create("nb", receiver_here=True)  # the sensor reaches the webhook on this loopback
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            capture, offset = build_capture(tmp, args.pps, args.seconds)
            runs = [one_run(wire, capture, offset, tmp) for _ in range(args.runs)]
    finally:
        wire.delete()
    e2e = [r["end_to_end_s"] for r in runs]
    lines = ["# First packet of a red-level attack to the webhook", "",
             "`bench/notify_bench.py`: tcpreplay sends the capture at its own timing (a paced replay) onto a veth pair;",
             "`liaowang sensor --iface … --notify` (default settings, all bundled rules and detectors) captures it and",
             "routes red alerts to a webhook server on loopback. Background: the generated standard mix at "
             f"{args.pps:,.0f} packets/s for {args.seconds:.0f} s;",
             f"the attack (a rogue PFCP Session Deletion on N4, graded red) is sent {offset:.0f} s in.", "",
             "| run | first attack packet sent → webhook received | notifier: decision → delivered |", "|---|---|---|"]
    lines += [f"| {i + 1} | {r['end_to_end_s']:.2f} s | {r['notifier_ms']:.1f} ms |" for i, r in enumerate(runs)]
    lines += ["", f"Median {statistics.median(e2e):.2f} s, worst {max(e2e):.2f} s (target: under 5 s).", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
