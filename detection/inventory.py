"""Network-function inventory, inferred passively from what each address does on the control plane.

Every role comes with its evidence (what was seen, how often), because a role
inferred from traffic is a claim an analyst must be able to check:

- NGAP: the SCTP side on port 38412 is an AMF, the other a gNB (NG Setup names both);
- PFCP: the sender of session establishment requests is an SMF, their receiver
  a UPF; F-TEIDs name UPF N3 addresses, outer header creation the gNBs';
- NGAP PDU session setup: the uplink tunnel address is a UPF's, the downlink one a gNB's;
- SBI: the server of ``/nudm-sdm/...`` is a UDM (TS 29.501 API names), the
  client is the NF its user-agent names (TS 29.500 5.2.2.2);
- GTPv2-C: F-TEID interface types (TS 29.274 8.22) name MME, SGW, PGW and eNodeB;
- Diameter: S6a requesters are MMEs and answerers HSSs, Gx requesters PGWs
  (PCEF) and answerers PCRFs, Cx requesters CSCFs and answerers HSSs.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from detection.sessions import rows_table
from sensors.schema import Field, arrow_schema

INVENTORY_SCHEMA_VERSION = 1
INVENTORY_FIELDS: list[Field] = [
    Field("ip", pa.string(), "the network function's address"),
    Field("role", pa.string(), "gNB, AMF, SMF, UPF, NRF, UDM, AUSF, PCF... (MME, SGW, PGW, eNodeB, HSS, PCRF in 4G)"),
    Field("ports", pa.list_(pa.uint16()), "ports it serves or sends from in that role"),
    Field("names", pa.list_(pa.string()), "names it gave itself (NG Setup node names, PFCP FQDN Node IDs,"
          " Diameter Origin-Host)"),
    Field("evidence", pa.list_(pa.string()), "what was seen, with counts, most frequent first"),
    Field("messages", pa.uint64(), "messages that were evidence for the role"),
    Field("first_seen", pa.timestamp("ns", tz="UTC"), "first evidence"),
    Field("last_seen", pa.timestamp("ns", tz="UTC"), "last evidence"),
]
INVENTORY_SCHEMA = arrow_schema(INVENTORY_FIELDS, "nf_inventory", INVENTORY_SCHEMA_VERSION)

GTPC_INTERFACE_ROLES = {0: ("eNodeB", "S1-U eNodeB F-TEID"), 1: ("SGW", "S1-U SGW F-TEID"),
                        4: ("SGW", "S5/S8 SGW GTP-U F-TEID"), 5: ("PGW", "S5/S8 PGW GTP-U F-TEID"),
                        6: ("SGW", "S5/S8 SGW GTP-C F-TEID"), 7: ("PGW", "S5/S8 PGW GTP-C F-TEID"),
                        10: ("MME", "S11 MME GTP-C F-TEID"), 11: ("SGW", "S11/S4 SGW GTP-C F-TEID")}
DIAMETER_ROLES = {16777251: ("MME", "HSS", "S6a"), 16777238: ("PGW", "PCRF", "Gx"), 16777216: ("CSCF", "HSS", "Cx"),
                  16777236: ("P-CSCF", "PCRF", "Rx"), 16777272: ("PGW", "AAA", "S6b")}


@dataclass
class _Role:
    first_ns: int
    last_ns: int = 0
    messages: int = 0
    ports: set[int] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    evidence: collections.Counter[str] = field(default_factory=collections.Counter)


class NfInventory:
    """Roles of addresses, from ``proto.*`` tables."""

    def __init__(self) -> None:
        self._roles: dict[tuple[str, str], _Role] = {}
        self._by_ip: dict[str, set[str]] = {}

    def roles(self, ip: str | None) -> set[str]:
        """The network-function roles seen at ``ip`` (empty: not a network function)."""
        return self._by_ip.get(ip or "", set())

    def update(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Messages of one batch (``detection.sessions.message_rows``)."""
        for name, m in messages:
            getattr(self, "_" + name)(m)

    def _add(self, ip: str | None, role: str, ts: int, evidence: str, port: int | None = None,
             name: str | None = None) -> None:
        if not ip:
            return
        r = self._roles.get((ip, role))
        if r is None:
            r = self._roles[(ip, role)] = _Role(first_ns=ts)
            self._by_ip.setdefault(ip, set()).add(role)
        r.first_ns = min(r.first_ns, ts)
        r.last_ns = max(r.last_ns, ts)
        r.messages += 1
        r.evidence[evidence] += 1
        if port:
            r.ports.add(port)
        if name:
            r.names.add(name)

    def _ngap(self, m: dict[str, Any]) -> None:
        ts = m["ts"]
        gnb_side = "src" if m["dst_port"] == 38412 else "dst" if m["src_port"] == 38412 else None
        if gnb_side is None:
            return
        gnb, amf = (m["src_ip"], m["dst_ip"]) if gnb_side == "src" else (m["dst_ip"], m["src_ip"])
        self._add(gnb, "gNB", ts, "NGAP client of port 38412", name=m["ran_node_name"])
        self._add(amf, "AMF", ts, "NGAP server on port 38412", port=38412, name=m["amf_name"])
        if m["procedure_code"] == 29:
            for t in m["gtp_tunnels"] or []:
                if m["pdu_type"] == 0:
                    self._add(t["ip"], "UPF", ts, "uplink N3 tunnel endpoint in NGAP PDU session setup", port=2152)
                else:
                    self._add(t["ip"], "gNB", ts, "downlink N3 tunnel endpoint in NGAP PDU session setup", port=2152)

    def _pfcp(self, m: dict[str, Any]) -> None:
        ts = m["ts"]
        if m["msg_type"] == 50:
            self._add(m["src_ip"], "SMF", ts, "sends PFCP session establishment requests", port=m["src_port"])
            self._add(m["dst_ip"], "UPF", ts, "receives PFCP session establishment requests", port=m["dst_port"])
        node = m["node_id"]
        if node and not node[0].isdigit() and ":" not in node:
            role = "SMF" if m["msg_type"] == 50 else "UPF" if m["msg_type"] == 51 else None
            if role:
                self._add(m["src_ip"], role, ts, "PFCP Node ID", name=node)
        for f in m["fteids"] or []:
            if f["ip"] and f["source_interface"] in (0, None):
                self._add(f["ip"], "UPF", ts, "N3 F-TEID in PFCP", port=2152)
        for o in m["outer_headers"] or []:
            if o["ip"]:
                self._add(o["ip"], "gNB", ts, "downlink tunnel endpoint in PFCP outer header creation", port=2152)

    def _sbi(self, m: dict[str, Any]) -> None:
        if not m["is_request"] or not m["nf_type"]:
            return
        self._add(m["dst_ip"], m["nf_type"], m["ts"], f"serves {m['service']}", port=m["dst_port"])
        if m["client_nf_type"]:
            self._add(m["src_ip"], m["client_nf_type"], m["ts"], f"calls {m['service']} as user-agent"
                      f" {m['client_nf_type']}")

    def _gtpc(self, m: dict[str, Any]) -> None:
        for f in m["fteids"] or []:
            role = GTPC_INTERFACE_ROLES.get(f["interface_type"])
            if role and f["ip"]:
                self._add(f["ip"], role[0], m["ts"], role[1] + " in GTPv2-C")

    def _diameter(self, m: dict[str, Any]) -> None:
        roles = DIAMETER_ROLES.get(m["app_id"])
        if roles is None:
            return
        requester, answerer, app = roles
        if m["is_request"]:
            self._add(m["src_ip"], requester, m["ts"], f"sends {app} {m['cmd_name']}", name=m["origin_host"])
        else:
            self._add(m["src_ip"], answerer, m["ts"], f"answers {app} {m['cmd_name']}", port=m["src_port"],
                      name=m["origin_host"])

    def table(self) -> pa.Table:
        rows = [{"ip": ip, "role": role, "ports": sorted(r.ports), "names": sorted(r.names),
                 "evidence": [f"{e} ({n})" for e, n in r.evidence.most_common()], "messages": r.messages,
                 "first_seen": r.first_ns, "last_seen": r.last_ns}
                for (ip, role), r in sorted(self._roles.items())]
        return rows_table(rows, INVENTORY_SCHEMA, ("first_seen", "last_seen"))
