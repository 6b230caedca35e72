"""Make golden per-packet fields with tshark (an oracle; the tests do not need it).

    python tests/oracles/tshark_fields.py pcaps/shared/*.pcap*

writes tests/golden/packets/<name>.json: for every frame the values tshark
decodes for the fields Liaowang must agree on.  Run it again after adding a
capture; the tests compare the decoder with these files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# name -> (tshark field, which occurrence: 0 first, None all of them joined by '|')
FIELDS = {
    "protocols": ("frame.protocols", 0),
    "ip_src": ("ip.src", None),
    "ipv6_src": ("ipv6.src", None),
    "ip_dst": ("ip.dst", None),
    "ipv6_dst": ("ipv6.dst", None),
    "teid": ("gtp.teid", 0),
    "gtpu_qfi": ("gtp.ext_hdr.pdu_ses_con.qos_flow_id", 0),
    "pfcp_msg_type": ("pfcp.msg_type", 0),
    "pfcp_seid": ("pfcp.seid", 0),
    "gtpc_msg_type": ("gtpv2.message_type", 0),
    "tls_sni": ("tls.handshake.extensions_server_name", 0),
    "dns_qname": ("dns.qry.name", 0),
    "sctp_ppid": ("sctp.data_payload_proto_id", 0),
    "http_method": ("http.request.method", 0),
    "http_host": ("http.host", 0),
    "http_uri": ("http.request.uri", 0),
    "http_user_agent": ("http.user_agent", 0),
    "ssh_banner": ("ssh.protocol", 0),
}
DECODE_AS = ["-d", "tcp.port==7777,http2", "-d", "tcp.port==29500-29599,http2"]


def run(path: str) -> list[dict[str, str]]:
    names = list(FIELDS)
    cmd = ["tshark", "-n", "-r", path, *DECODE_AS, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
           "-E", "aggregator=|"]
    for n in names:
        cmd += ["-e", FIELDS[n][0]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        vals = line.split("\t")
        row = {}
        for n, v in zip(names, vals):
            if v:
                which = FIELDS[n][1]
                row[n] = v if which is None else v.split("|")[which]
        rows.append(row)
    return rows


def main(paths: list[str]) -> None:
    out_dir = Path(__file__).resolve().parent.parent / "golden" / "packets"
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        rows = run(p)
        (out_dir / (Path(p).name + ".json")).write_text(json.dumps(rows, separators=(",", ":")) + "\n")
        print(f"{p}: {len(rows)} frames")


if __name__ == "__main__":
    main(sys.argv[1:])
