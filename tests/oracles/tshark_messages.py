"""Make golden control-plane message fields with tshark (an oracle; the tests do not need it).

    python tests/oracles/tshark_messages.py pcaps/shared/*.pcap*

writes tests/golden/messages/<name>.json for captures with PFCP, GTPv2-C,
Diameter or NGAP: per message the fields the proto tables must agree on, and
the sessions tshark's fields imply (a PFCP establishment's UE address and
F-SEIDs, its UPF F-TEID, the gNB TEID of the modification that follows).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIELDS = {
    "pfcp": ["pfcp.msg_type", "pfcp.seid", "pfcp.seqno", "pfcp.f_teid.teid", "pfcp.ue_ip_addr_ipv4",
             "pfcp.outer_hdr_creation.teid", "pfcp.cause", "ip.src", "ip.dst"],
    "gtpv2": ["gtpv2.message_type", "gtpv2.seq", "e212.imsi", "gtpv2.apn", "gtpv2.pdn_addr_and_prefix.ipv4",
              "gtpv2.f_teid_interface_type", "gtpv2.f_teid_gre_key", "gtpv2.cause"],
    "diameter": ["diameter.cmd.code", "diameter.applicationId", "diameter.Origin-Host", "diameter.Result-Code"],
    "ngap": ["ngap.procedureCode", "ngap.RAN_UE_NGAP_ID", "ngap.AMF_UE_NGAP_ID", "ngap.gTP_TEID"],
}


def run(path: str, proto: str) -> list[dict[str, list[str]]]:
    where = f"{proto} and not icmp" + (" and sctp" if proto == "ngap" else "")  # not in ICMP errors or SBI
    cmd = ["tshark", "-n", "-r", path, "-Y", where,
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
           "-E", "aggregator=|", "-e", "frame.number"]
    for f in FIELDS[proto]:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        vals = line.split("\t")
        rows.append({"frame": [vals[0]], **{f: [x for x in v.split("|") if x] for f, v in zip(FIELDS[proto], vals[1:])}})
    return rows


def sessions(pfcp: list[dict[str, list[str]]]) -> list[dict[str, object]]:
    """PFCP establishment request/response pairs (by node pair and sequence number) and the modification that
    follows (by UPF and SEID: SEIDs are only unique per node, and a CUPS core's SGW and PGW both hand out 1, 2...)."""
    out: dict[tuple[str, str, int], dict[str, object]] = {}
    by_up_seid: dict[tuple[str, int], dict[str, object]] = {}
    for m in pfcp:
        mtype, seq = int(m["pfcp.msg_type"][0]), int(m["pfcp.seqno"][0])
        src, dst = m["ip.src"][-1], m["ip.dst"][-1]  # the innermost IP header's
        fseid = int(m["pfcp.seid"][1], 0) if len(m["pfcp.seid"]) > 1 else None  # after the header's
        if mtype == 50 and fseid is not None:
            out[(src, dst, seq)] = {"ue_ip": (m["pfcp.ue_ip_addr_ipv4"] or [None])[0], "cp_seid": fseid}
        elif mtype == 51 and (dst, src, seq) in out and fseid is not None:
            s = out[(dst, src, seq)]
            s["up_seid"] = fseid
            if m["pfcp.f_teid.teid"]:
                s["ul_teid"] = int(m["pfcp.f_teid.teid"][0], 0)
            by_up_seid[(src, fseid)] = s
        elif mtype == 52 and m["pfcp.seid"] and (dst, int(m["pfcp.seid"][0], 0)) in by_up_seid:
            if m["pfcp.outer_hdr_creation.teid"]:
                by_up_seid[(dst, int(m["pfcp.seid"][0], 0))]["dl_teid"] = int(m["pfcp.outer_hdr_creation.teid"][0], 0)
    return [s for s in out.values() if "up_seid" in s]


def main(paths: list[str]) -> None:
    dest = Path(__file__).resolve().parent.parent / "golden" / "messages"
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        got = {proto: run(p, proto) for proto in FIELDS}
        if not any(got.values()):
            continue
        got["sessions"] = sessions(got["pfcp"])  # type: ignore[assignment]
        (dest / (Path(p).name + ".json")).write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
        print(p, {k: len(v) for k, v in got.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
