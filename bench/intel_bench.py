"""What threat-intelligence matching costs a replay: the same capture with and without large feeds.

    .venv/bin/python bench/intel_bench.py [--runs 3] [--out bench/intel-results.md]

The capture is the benchmark's standard 1M-packet mix (``bench/data``, made by
``bench/run.sh`` or here).  The feeds: 20,000 addresses and 5,000 networks of
three prefix lengths (STIX), 20,000 domains and 2,000 URLs (MISP), 2,000 JA3
and 1,000 JA4 fingerprints (plain lists), plus a handful of the capture's own
addresses and names so that matches flow on to alerts.  Runs alternate; each
figure is the median wall time of ``liaowang replay`` (all bundled rules, both
cores) as a whole process, and the ratio is with-feeds / without.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import ensure_capture, measure  # noqa: E402


def write_feeds(tmp: Path, capture_hosts: list[str], capture_names: list[str]) -> Path:
    rnd = random.Random(1)
    objects = [{"type": "indicator", "spec_version": "2.1", "id": f"indicator--{i}", "pattern_type": "stix",
                "valid_from": "2000-01-01T00:00:00Z", "pattern": f"[ipv4-addr:value = '{a}']"}
               for i, a in enumerate([f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}."
                                      f"{rnd.randrange(256)}" for _ in range(20_000)] + capture_hosts)]
    for prefix in (16, 20, 24):
        objects += [{"type": "indicator", "spec_version": "2.1", "id": f"indicator--n{prefix}-{i}", "pattern_type":
                     "stix", "valid_from": "2000-01-01T00:00:00Z",
                     "pattern": f"[ipv4-addr:value ISSUBSET '{rnd.randrange(1, 224)}.{rnd.randrange(256)}.0.0/{prefix}']"}
                    for i in range(5_000 // 3)]
    (tmp / "ips.json").write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects}))
    attributes = [{"type": "domain", "value": f"h{i}.bad{rnd.randrange(10**6)}.example", "to_ids": True}
                  for i in range(20_000)] + [{"type": "domain", "value": n, "to_ids": True} for n in capture_names]
    attributes += [{"type": "url", "value": f"http://bad{i}.example/p/{i}", "to_ids": True} for i in range(2_000)]
    (tmp / "misp.json").write_text(json.dumps({"Event": {"info": "bench", "Attribute": attributes}}))
    (tmp / "ja3.txt").write_text("\n".join(f"{rnd.getrandbits(128):032x}" for _ in range(2_000)))
    (tmp / "ja4.txt").write_text("\n".join(f"t13d1516h2_{rnd.getrandbits(48):012x}_{rnd.getrandbits(48):012x}"
                                           for _ in range(1_000)))
    config = tmp / "intel.yml"
    config.write_text(yaml.safe_dump({"feeds": [
        {"name": "ips", "path": "ips.json"}, {"name": "misp", "path": "misp.json"},
        {"name": "ja3", "path": "ja3.txt", "type": "ja3"}, {"name": "ja4", "path": "ja4.txt"}]}))
    return config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "intel-results.md"))
    args = ap.parse_args()
    capture = ensure_capture(1_000_000, "standard")
    liaowang = str(ROOT / ".venv" / "bin" / "liaowang")
    with tempfile.TemporaryDirectory(prefix="liaowang-intel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # a few of the capture's own servers and names, so matches reach alerts
        measure([liaowang, "replay", str(capture), "--out", str(tmp / "probe"), "-q", "--no-rules"])
        flows = pq.read_table(tmp / "probe" / "flows.parquet", columns=["dst_ip", "server_name"]).to_pydict()
        hosts = sorted({a for a in flows["dst_ip"] if a and ":" not in a})[:5]
        names = sorted({n for n in flows["server_name"] if n and "." in n})[:5]
        config = write_feeds(tmp, hosts, names)
        base = [liaowang, "replay", str(capture), "--out", str(tmp / "out"), "-q"]
        timing: dict[str, list[float]] = {"without feeds": [], "with feeds": []}
        peaks: dict[str, int] = {}
        alerts = 0
        for _ in range(args.runs):
            for name, cmd in (("without feeds", base), ("with feeds", [*base, "--intel", str(config)])):
                wall, peak, _ = measure(cmd)
                timing[name].append(wall)
                peaks[name] = max(peaks.get(name, 0), peak)
                if name == "with feeds":
                    table = pq.read_table(tmp / "out" / "alerts.parquet", columns=["detector"])
                    alerts = table.column("detector").to_pylist().count("intel")
    indicators = 20_000 + len(hosts) + 3 * (5_000 // 3) + 20_000 + len(names) + 2_000 + 2_000 + 1_000
    median = {k: statistics.median(v) for k, v in timing.items()}
    lines = ["# Threat-intelligence matching cost", "",
             f"`bench/intel_bench.py`, {args.runs} alternating runs, standard capture (1,000,000 packets), "
             f"all bundled rules, both cores; feeds of {indicators:,} indicators (IPs, 3 prefix lengths of networks, "
             f"domains, URLs, JA3, JA4); {alerts} intelligence alerts with the feeds.", "",
             "| run | median wall s | packets/s | peak RSS MiB |", "|---|---:|---:|---:|"]
    for name in timing:
        lines.append(f"| {name} | {median[name]:.2f} | {1_000_000 / median[name]:,.0f} | {peaks[name] / 1024:,.0f} |")
    lines += ["", f"Ratio with / without: **{median['with feeds'] / median['without feeds']:.2f}x** wall time."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
