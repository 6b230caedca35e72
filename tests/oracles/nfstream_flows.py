"""Make golden flow totals with nfstream 6.6 (GTP-aware; an oracle the tests do not need).

    <venv with nfstream>/bin/python tests/oracles/nfstream_flows.py pcaps/shared/*.pcap*

writes tests/golden/flows/<name>.json: per flow the inner 5-tuple with the
packet and byte totals nfstream counts (idle 120 s, active 1800 s).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nfstream import NFStreamer


def main(paths: list[str]) -> None:
    out_dir = Path(__file__).resolve().parent.parent / "golden" / "flows"
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        rows = []
        try:
            for f in NFStreamer(source=p, statistical_analysis=False, n_dissections=0, decode_tunnels=True):
                rows.append([f.src_ip, f.dst_ip, f.src_port, f.dst_port, f.protocol, f.bidirectional_packets,
                             f.bidirectional_bytes, f.src2dst_packets, f.dst2src_packets])
        except ValueError as exc:  # libpcap cannot read some pcapng files
            print(f"{p}: skipped ({exc})")
            continue
        rows.sort()
        (out_dir / (Path(p).name + ".json")).write_text(json.dumps(rows) + "\n")
        print(f"{p}: {len(rows)} flows")


if __name__ == "__main__":
    main(sys.argv[1:])
