"""Cross-plane session correlation: which subscriber, which session, which slice.

A 5G PDU session is set up on three interfaces that no single message joins:

- N2 (NGAP/NAS, gNB <-> AMF): the subscriber (SUPI from a null-scheme SUCI),
  the RAN/AMF UE NGAP ids, the PDU session id and S-NSSAI, the UPF's uplink
  N3 tunnel (in the setup request) and the gNB's downlink tunnel (response);
- N4 (PFCP, SMF <-> UPF): the SMF's and UPF's F-SEIDs, the UE IP address,
  the DNN (network instance), the UPF's N3 F-TEID and, on modification, the
  gNB's tunnel as outer header creation;
- N3 (GTP-U, gNB <-> UPF): the tunnels, and inside them the UE's N6 flows.

The shared keys are the tunnel endpoints (address, TEID) and the UE address;
they link the pieces as messages arrive, in time order, and a piece that links
two partial sessions merges them.  4G sessions (GTPv2-C on S11/S5: IMSI, APN,
EBI, PAA, S1-U and S5 F-TEIDs) go through the same table.  SBI paths add SUPIs
of subscribers but carry no tunnel keys, so they are not used to link.

While correlating, the table also reports what it sees that contradicts the
learned state, as control events for the detectors (``detection.detectors.
control_plane``): a PFCP modification/deletion from a node that did not create
the session, G-PDUs to an N3 TEID that no session holds at a UPF whose N4 was
observed from its association on, and uplink G-PDUs whose inner source is not
the UE address bound to their TEID.  It also turns NGAP and SBI messages into
control events (registrations, malformed NAS, SBI calls) for the detectors that
count them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.schema import Field, arrow_schema

SESSION_SCHEMA_VERSION = 1
SESSION_FIELDS: list[Field] = [
    Field("session_id", pa.string(), "deterministic id of the session (hash of the identifiers it was created with)"),
    Field("generation", pa.string(), "5g (NGAP/PFCP) or 4g (GTPv2-C)"),
    Field("subscriber", pa.string(), "pseudonymous subscriber id (keyed hash of the SUPI/IMSI), null if never seen"),
    Field("state", pa.string(), "establishing, established, modified or released"),
    Field("first_seen", pa.timestamp("ns", tz="UTC"), "first message of the session"),
    Field("last_seen", pa.timestamp("ns", tz="UTC"), "last message or user-plane flow of the session"),
    Field("pdu_session_id", pa.uint8(), "PDU session id (5G) or EPS bearer id (4G)"),
    Field("dnn", pa.string(), "DNN (5G) or APN (4G)"),
    Field("snssai", pa.string(), "S-NSSAI as SST or SST-SD"),
    Field("ue_ip", pa.string(), "the UE's address in the data network"),
    Field("gnb_ip", pa.string(), "gNB (eNodeB) N3/S1-U address"),
    Field("dl_teid", pa.uint32(), "downlink TEID at the gNB"),
    Field("upf_ip", pa.string(), "UPF (SGW-U) N3/S1-U address"),
    Field("ul_teid", pa.uint32(), "uplink TEID at the UPF"),
    Field("ran_ue_ngap_id", pa.uint64(), "RAN UE NGAP ID"),
    Field("amf_ue_ngap_id", pa.uint64(), "AMF UE NGAP ID"),
    Field("amf_ip", pa.string(), "AMF (MME) signalling address"),
    Field("smf_ip", pa.string(), "SMF (SGW-C/PGW-C) N4 or S11 address"),
    Field("cp_seid", pa.uint64(), "the SMF's SEID (or the MME's S11 TEID)"),
    Field("up_seid", pa.uint64(), "the UPF's SEID (or the SGW's S11 TEID)"),
    Field("planes", pa.list_(pa.string()), "interfaces the session was seen on (n2, n4, n3, s11/s5)"),
    Field("messages", pa.uint32(), "control-plane messages of the session"),
    Field("gtpu_flows", pa.uint64(), "user-plane flows attributed to the session"),
    Field("gtpu_bytes", pa.uint64(), "bytes of those flows, both directions"),
]
SESSION_SCHEMA = arrow_schema(SESSION_FIELDS, "sessions", SESSION_SCHEMA_VERSION)

CONTROL_EVENT_VERSION = 1
CONTROL_EVENT_FIELDS: list[Field] = [
    Field("ts", pa.timestamp("ns", tz="UTC"), "when"),
    Field("kind", pa.string(), "what: ngap_registration_request, ngap_deregistration_request, ngap_malformed,"
          " sbi_request, pfcp_foreign_session_request, pfcp_unknown_session_request, pfcp_session_without_user_plane,"
          " gtpu_unknown_teid,"
          " gtpu_ue_address_mismatch"),
    Field("src_ip", pa.string(), "sender"),
    Field("dst_ip", pa.string(), "receiver"),
    Field("src_port", pa.uint16(), "sender port"),
    Field("dst_port", pa.uint16(), "receiver port"),
    Field("ip_proto", pa.uint8(), "IP protocol"),
    Field("teid", pa.uint32(), "GTP-U TEID, for user-plane events"),
    Field("tunnel_src_ip", pa.string(), "outer source, for user-plane events"),
    Field("tunnel_dst_ip", pa.string(), "outer destination, for user-plane events"),
    Field("flow_id", pa.int64(), "the flow"),
    Field("key", pa.string(), "what the event is about: the SBI service, the subscriber pseudonym..."),
    Field("detail", pa.string(), "explanation"),
]
CONTROL_EVENT_SCHEMA = arrow_schema(CONTROL_EVENT_FIELDS, "control_events", CONTROL_EVENT_VERSION)

PFCP_EST_REQ, PFCP_EST_RESP, PFCP_MOD_REQ, PFCP_MOD_RESP, PFCP_DEL_REQ, PFCP_DEL_RESP = 50, 51, 52, 53, 54, 55
PFCP_ASSOC_SETUP_REQ, PFCP_ASSOC_SETUP_RESP = 5, 6
NGAP_PDU_SESSION_SETUP, NGAP_PDU_SESSION_RELEASE, NGAP_INITIAL_UE, NGAP_UE_CONTEXT_RELEASE = 29, 28, 15, 41
NAS_REGISTRATION_REQUEST, NAS_DEREGISTRATION_REQUEST_UE = 0x41, 0x45
GTPC_CREATE_REQ, GTPC_CREATE_RESP, GTPC_MODIFY_REQ, GTPC_DELETE_REQ, GTPC_DELETE_RESP = 32, 33, 34, 36, 37
S1U_ENB, S1U_SGW, S5U_SGW, S5U_PGW = 0, 1, 4, 5
ACCEPTED_PFCP, ACCEPTED_GTPC = 1, 16
PROTO_ORDER = ("pfcp", "gtpc", "ngap", "sbi", "diameter")
#: the message columns the session table and the inventory read: only these are turned into Python (the
#: others, lists of rule ids and the like, cost as much again); a column left out reads as missing (KeyError)
READ_COLUMNS = frozenset((
    "ts", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "flow_id", "tunnel_src_ip", "tunnel_dst_ip",
    "teid", "msg_type", "is_request", "malformed", "version", "seq", "cause", "seid", "node_id", "fseid_seid",
    "fteids", "outer_headers", "network_instances", "ue_ip", "ue_ips", "supi", "imsi", "apn", "dnn", "pdu_type",
    "ebis", "snssais", "pdu_session_ids", "gtp_tunnels", "procedure_code", "procedure_name", "ran_ue_ngap_id",
    "amf_ue_ngap_id", "ran_node_name", "amf_name", "nas_mm_types", "nf_type", "client_nf_type", "service",
    "app_id", "origin_host", "cmd_name",
))
MAX_PENDING = 100_000
#: sessions kept (live and released): beyond it, released ones go first, then the longest idle, down to EVICT_TO
#: of it (a flood of establishment requests with random SEIDs must not exhaust the sensor's memory)
MAX_SESSIONS = 500_000
EVICT_TO = 0.9
#: what goes first: ended sessions, then requests nobody answered (a flood's), then set-up ones
EVICT_RANK = {"released": 0, "rejected": 0, "establishing": 1}


@dataclass
class Session:
    sid: int
    first_ns: int
    generation: str
    created_by: str
    last_ns: int = 0
    state: str = "establishing"
    subscriber: str | None = None
    pdu_session_id: int | None = None
    dnn: str | None = None
    snssai: str | None = None
    ue_ip: str | None = None
    gnb_ip: str | None = None
    dl_teid: int | None = None
    upf_ip: str | None = None
    ul_teid: int | None = None
    ran_ue_ngap_id: int | None = None
    amf_ue_ngap_id: int | None = None
    amf_ip: str | None = None
    smf_ip: str | None = None
    cp_seid: int | None = None
    up_seid: int | None = None
    planes: set[str] = field(default_factory=set)
    # every control node and UE address the session was set up with (merged pieces, CUPS legs)
    cp_nodes: set[str] = field(default_factory=set)
    ue_ips: set[str] = field(default_factory=set)
    messages: int = 0
    gtpu_flows: int = 0
    gtpu_bytes: int = 0
    merged_into: int | None = None

    @property
    def session_id(self) -> str:
        return "sess-" + hashlib.sha1(f"{self.created_by}|{self.first_ns}".encode()).hexdigest()[:16]

    def touch(self, ts: int, plane: str) -> None:
        self.last_ns = max(self.last_ns, ts)
        self.planes.add(plane)
        self.messages += 1


class SessionTable:
    """Sessions learned from ``proto.*`` tables in time order; user-plane flows attributed to them."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self.evicted = 0  # sessions forgotten by the limit
        self._evicted: list[Session] = []  # since the last take_evicted
        self._sessions: dict[int, Session] = {}  # by sid; merged pieces stay until their session goes
        self._next_sid = 0
        self._by_key: dict[tuple[Any, ...], int] = {}  # identifier -> session index
        self._ue_ips: pa.Array | None = None  # the UE addresses among the keys, sorted (None: to rebuild)
        self._pending: dict[tuple[Any, ...], int] = {}  # request awaiting its response -> session index
        self._ue: dict[tuple[Any, ...], dict[str, Any]] = {}  # NGAP UE context (gNB, RAN UE id) -> facts
        self._observed_upfs: set[str] = set()  # UPFs whose PFCP association was seen: all their sessions known
        self._observed_n3: set[str] = set()  # the N3 addresses of those UPFs (F-TEIDs of their sessions)
        self._session_nodes: set[str] = set()  # nodes that sent or received session messages
        self._n3_carried: set[str] = set()  # UPF N3 addresses some session's G-PDUs were seen at
        self._deleted: dict[int, int] = {}  # PFCP-deleted sessions awaiting the silence check -> deletion time
        self._events: list[dict[str, Any]] = []

    # -- control plane -------------------------------------------------------------

    def update(self, messages: list[tuple[str, dict[str, Any]]]) -> pa.Table:
        """Messages of one batch (:func:`message_rows`) -> control events."""
        for name, m in messages:
            getattr(self, "_" + name)(m)
        return self._take_events()

    def _pfcp(self, m: dict[str, Any]) -> None:
        ts, mtype, src, dst = m["ts"], m["msg_type"], m["src_ip"], m["dst_ip"]
        if mtype in (PFCP_ASSOC_SETUP_REQ, PFCP_ASSOC_SETUP_RESP):
            # either side may be the UPF; a node seen in sessions before its association may hold
            # sessions we never saw set up, so it is not fully observed
            self._observed_upfs |= {src, dst} - self._session_nodes
            return
        if mtype >= PFCP_EST_REQ:
            self._session_nodes |= {src, dst}
        if mtype == PFCP_EST_REQ:
            key = ("fseid", src, m["fseid_seid"])
            s = self._find(key) if m["fseid_seid"] is not None else None
            if s is None or s.state != "establishing":  # else a retransmission, before the UPF answered
                # an SMF never hands out a live F-SEID again: the session that had it ended unseen (a core
                # restarted, and counts from 1 again); it keeps what it was, and this is a new one
                self._by_key.pop(key, None)
                s = self._new(ts, "5g", f"pfcp|{src}|{m['fseid_seid']}")
            s.smf_ip, s.cp_seid, s.upf_ip = src, m["fseid_seid"], s.upf_ip or dst
            s.subscriber = s.subscriber or m.get("supi")  # the User ID IE, when the SMF sends it
            s.cp_nodes.add(src)
            self._key(s, ("fseid", src, m["fseid_seid"]))
            self._pfcp_rules(s, m)
            self._pend(("pfcp", dst, src, m["seq"]), s)
            s.touch(ts, "n4")
            return
        if mtype in (PFCP_EST_RESP, PFCP_MOD_RESP, PFCP_DEL_RESP):
            s = self._answer(("pfcp", src, dst, m["seq"]))
            if s is None:
                return
            s.touch(ts, "n4")
            accepted = m["cause"] == ACCEPTED_PFCP
            if mtype == PFCP_EST_RESP and m["fseid_seid"] is not None:
                s.up_seid = m["fseid_seid"]
                self._key(s, ("upseid", src, s.up_seid))
                self._pfcp_rules(s, m)
                s.state = "established" if accepted else "rejected"
            elif mtype == PFCP_MOD_RESP and accepted and s.state != "released":
                s.state = "modified"
            elif mtype == PFCP_DEL_RESP and accepted:
                s.state = "released"
                if s.ul_teid is not None and s.gtpu_flows == 0:
                    self._deleted[s.sid] = ts
            return
        if mtype in (PFCP_MOD_REQ, PFCP_DEL_REQ):
            s = self._find(("upseid", dst, m["seid"]))
            what = "deletion" if mtype == PFCP_DEL_REQ else "modification"
            if s is None:
                if dst in self._observed_upfs:
                    self._event(m, "pfcp_unknown_session_request", key=f"seid={m['seid']}",
                                detail=f"PFCP session {what} request for SEID {m['seid']}, which no session"
                                       f" established at UPF {dst} holds")
                return
            if s.cp_nodes and src not in s.cp_nodes:
                self._event(m, "pfcp_foreign_session_request", key=f"seid={m['seid']}",
                            detail=f"PFCP session {what} request from {src} for a session that {s.smf_ip} created"
                                   f" ({s.session_id}{', subscriber ' + s.subscriber if s.subscriber else ''})")
                return  # the UPF should reject it: it does not change what we know of the session
            self._pfcp_rules(s, m)
            self._pend(("pfcp", dst, src, m["seq"]), s)
            s.touch(ts, "n4")

    def _pfcp_rules(self, s: Session, m: dict[str, Any]) -> None:
        for ip in m["ue_ips"] or []:
            s.ue_ip = ip
            s.ue_ips.add(ip)
            self._key(s, ("ue", ip))
        if m["network_instances"] and s.dnn is None:
            s.dnn = m["network_instances"][-1]
        for f in m["fteids"] or []:
            if f["teid"] is not None and f["ip"] and f["source_interface"] in (0, None):
                s.upf_ip, s.ul_teid = f["ip"], f["teid"]
                self._key(s, ("teid", f["ip"], f["teid"]))
                if m["src_ip"] in self._observed_upfs or m["dst_ip"] in self._observed_upfs:
                    self._observed_n3.add(f["ip"])
        for o in m["outer_headers"] or []:
            if o["ip"] and o["teid"] is not None:
                if o["destination_interface"] in (0, None):  # towards the RAN: the gNB/eNB's downlink endpoint
                    s.gnb_ip, s.dl_teid = o["ip"], o["teid"]
                self._key(s, ("teid", o["ip"], o["teid"]))

    def _ngap(self, m: dict[str, Any]) -> None:
        ts, src, dst = m["ts"], m["src_ip"], m["dst_ip"]
        if m["malformed"]:
            self._event(m, "ngap_malformed", key=m["procedure_name"],
                        detail=f"malformed NGAP/NAS in {m['procedure_name']} from {src}")
        from_gnb = m["dst_port"] == 38412 or (m["src_port"] != 38412 and m["pdu_type"] != 0)
        gnb, amf = (src, dst) if from_gnb else (dst, src)
        mm = m["nas_mm_types"] or []
        if NAS_REGISTRATION_REQUEST in mm:
            self._event(m, "ngap_registration_request", key=gnb, detail=None)
        if NAS_DEREGISTRATION_REQUEST_UE in mm and from_gnb:
            self._event(m, "ngap_deregistration_request", key=gnb, detail=None)
        if m["ran_ue_ngap_id"] is None:
            return
        ue = self._ue.setdefault((gnb, m["ran_ue_ngap_id"]), {})
        if len(self._ue) > MAX_PENDING:
            self._ue.pop(next(iter(self._ue)))
        if m["supi"]:
            ue["subscriber"] = m["supi"]
        if m["amf_ue_ngap_id"] is not None:
            ue["amf_ue_ngap_id"] = m["amf_ue_ngap_id"]
        touched: list[Session] = []
        if m["procedure_code"] == NGAP_PDU_SESSION_SETUP:
            for t in m["gtp_tunnels"] or []:
                s = self._find(("teid", t["ip"], t["teid"]))
                if m["pdu_type"] == 0:  # request, AMF -> gNB: the UPF's uplink endpoint
                    if s is None:
                        s = self._find(("n2", gnb, m["ran_ue_ngap_id"], tuple(m["pdu_session_ids"] or ())))
                    if s is None:
                        s = self._new(ts, "5g", f"ngap|{gnb}|{m['ran_ue_ngap_id']}|{m['pdu_session_ids']}")
                    s.upf_ip, s.ul_teid = t["ip"], t["teid"]
                else:  # response, gNB -> AMF: the gNB's downlink endpoint
                    s = s or self._find(("n2", gnb, m["ran_ue_ngap_id"], tuple(m["pdu_session_ids"] or ())))
                    if s is None:
                        continue
                    s.gnb_ip, s.dl_teid = t["ip"], t["teid"]
                    if s.state == "establishing":
                        s.state = "established"
                self._key(s, ("teid", t["ip"], t["teid"]))
                self._key(s, ("n2", gnb, m["ran_ue_ngap_id"], tuple(m["pdu_session_ids"] or ())))
                if m["pdu_session_ids"]:
                    s.pdu_session_id = m["pdu_session_ids"][0]
                if m["snssais"]:
                    s.snssai = m["snssais"][0]
                touched.append(s)
        elif m["procedure_code"] in (NGAP_PDU_SESSION_RELEASE, NGAP_UE_CONTEXT_RELEASE) and m["pdu_type"] == 1:
            for psi in (m["pdu_session_ids"] or []) if m["procedure_code"] == NGAP_PDU_SESSION_RELEASE else []:
                s = self._find(("n2", gnb, m["ran_ue_ngap_id"], (psi,)))
                if s is not None:
                    s.state = "released"
                    touched.append(s)
        if m["ue_ip"]:
            s = self._find(("ue", m["ue_ip"]))
            if s is not None:
                touched.append(s)
        for s in touched:
            s.ran_ue_ngap_id = m["ran_ue_ngap_id"]
            s.amf_ue_ngap_id = ue.get("amf_ue_ngap_id", s.amf_ue_ngap_id)
            s.amf_ip = amf
            s.subscriber = s.subscriber or ue.get("subscriber")
            s.dnn = s.dnn or m["dnn"]
            s.touch(ts, "n2")

    def _gtpc(self, m: dict[str, Any]) -> None:
        if m["version"] != 2:
            return
        ts, mtype, src, dst = m["ts"], m["msg_type"], m["src_ip"], m["dst_ip"]
        plane = "s11" if any(f["interface_type"] in (10, 11) for f in m["fteids"] or []) else "s5"
        if mtype == GTPC_CREATE_REQ:
            ebi = (m["ebis"] or [None])[0]
            s = self._find(("imsi", m["imsi"], ebi, m["apn"])) if m["imsi"] else None
            if s is None:
                s = self._new(ts, "4g", f"gtpc|{src}|{m['imsi']}|{ebi}|{m['apn']}|{m['seq']}")
                s.amf_ip, s.smf_ip, s.cp_seid = src, dst, next(
                    (f["teid"] for f in m["fteids"] or [] if f["ebi"] is None), None)
            if m["imsi"]:
                s.subscriber = m["imsi"]
                self._key(s, ("imsi", m["imsi"], ebi, m["apn"]))
            s.pdu_session_id, s.dnn = ebi, m["apn"]
            self._gtpc_tunnels(s, m)
            self._pend(("gtpc", dst, src, m["seq"]), s)
            s.touch(ts, plane)
        elif mtype in (GTPC_CREATE_RESP, 35, GTPC_DELETE_RESP):
            s = self._answer(("gtpc", src, dst, m["seq"]))
            if s is None:
                return
            accepted = m["cause"] == ACCEPTED_GTPC
            if mtype == GTPC_CREATE_RESP:
                if m["ue_ip"] and m["ue_ip"] != "0.0.0.0":
                    s.ue_ip = m["ue_ip"]
                    s.ue_ips.add(m["ue_ip"])
                    self._key(s, ("ue", m["ue_ip"]))
                s.state = "established" if accepted else "rejected"
            elif mtype == 35 and accepted and s.state != "released":
                s.state = "modified"
            elif mtype == GTPC_DELETE_RESP and accepted:
                s.state = "released"
            self._gtpc_tunnels(s, m)
            s.touch(ts, plane)
        elif mtype in (GTPC_MODIFY_REQ, GTPC_DELETE_REQ) and m["teid"]:
            s = self._find(("gtpc_teid", dst, m["teid"]))
            if s is not None:
                self._gtpc_tunnels(s, m)
                self._pend(("gtpc", dst, src, m["seq"]), s)
                s.touch(ts, plane)

    def _gtpc_tunnels(self, s: Session, m: dict[str, Any]) -> None:
        for f in m["fteids"] or []:
            if f["ip"] is None:
                continue
            if f["ebi"] is None:  # the control endpoint of a node: requests to it carry this TEID
                self._key(s, ("gtpc_teid", f["ip"], f["teid"]))
                continue
            if f["interface_type"] == S1U_ENB:
                s.gnb_ip, s.dl_teid = f["ip"], f["teid"]
            elif f["interface_type"] == S1U_SGW:
                s.upf_ip, s.ul_teid = f["ip"], f["teid"]
            self._key(s, ("teid", f["ip"], f["teid"]))

    def _sbi(self, m: dict[str, Any]) -> None:
        if m["is_request"] and m["service"]:
            self._event(m, "sbi_request", key=f"{m['client_nf_type'] or '?'}>{m['service']}",
                        detail=m["supi"])

    def _diameter(self, m: dict[str, Any]) -> None:
        return  # Diameter names subscribers and peers but no tunnel or session keys: inventory only

    # -- user plane ------------------------------------------------------------------

    def attribute(self, flows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Flows with ``session_id`` filled for GTP-U flows (and UE flows seen untunnelled on N6),
        and the control events that attribution found (unknown TEIDs, spoofed UE addresses)."""
        if not flows.num_rows or not self._sessions:
            return flows, self._take_events()
        cols = ["flow_id", "first_seen", "last_seen", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto",
                "tunnel_type", "teid", "dst2src_teid", "tunnel_src_ip", "tunnel_dst_ip", "bidirectional_bytes"]
        if self._ue_ips is None:  # rebuilt only after a new UE address or an eviction, not per batch
            self._ue_ips = pa.array(sorted({k[1] for k in self._by_key if k[0] == "ue"}), pa.string())
        ue_ips = self._ue_ips
        mine = pc.fill_null(pc.or_(pc.equal(flows.column("tunnel_type"), "gtpu"),
                                   pc.or_(pc.is_in(flows.column("src_ip"), ue_ips),
                                          pc.is_in(flows.column("dst_ip"), ue_ips))), False)
        rows = np.flatnonzero(np.asarray(mine.to_numpy(zero_copy_only=False)))
        t = flows.select(cols).take(pa.array(rows))
        t = t.set_column(1, "first_seen", t.column("first_seen").cast(pa.int64()))
        t = t.set_column(2, "last_seen", t.column("last_seen").cast(pa.int64()))
        ids: list[str | None] = [None] * flows.num_rows
        for row, f in zip(rows.tolist(), t.to_pylist()):
            if f["tunnel_type"] == "gtpu":
                s = self._gtpu_flow(f)
            else:
                s = self._find(("ue", f["src_ip"])) or self._find(("ue", f["dst_ip"]))
            if s is not None:
                s.gtpu_flows += 1
                s.gtpu_bytes += f["bidirectional_bytes"] or 0
                s.last_ns = max(s.last_ns, f["last_seen"])
                if f["tunnel_type"] == "gtpu":
                    s.planes.add("n3")
                ids[row] = s.session_id
        i = flows.schema.get_field_index("session_id")
        return flows.set_column(i, flows.schema.field(i), pa.array(ids, pa.string())), self._take_events()

    def _gtpu_flow(self, f: dict[str, Any]) -> Session | None:
        up = self._find(("teid", f["tunnel_dst_ip"], f["teid"])) if f["teid"] is not None else None
        down = self._find(("teid", f["tunnel_src_ip"], f["dst2src_teid"])) if f["dst2src_teid"] is not None else None
        s = up or down or self._find(("ue", f["src_ip"])) or self._find(("ue", f["dst_ip"]))
        if up is None and f["teid"] is not None and f["tunnel_dst_ip"] in self._observed_n3:
            self._event(_flow_event(f), "gtpu_unknown_teid", key=f"{f['tunnel_dst_ip']}/{f['teid']}",
                        detail=f"G-PDUs to TEID {f['teid']} at UPF {f['tunnel_dst_ip']}, which no session established"
                               " over its PFCP association holds")
        elif (up is not None and up.ue_ip and (up.upf_ip, up.ul_teid) == (f["tunnel_dst_ip"], f["teid"])
              and f["src_ip"] not in up.ue_ips and _comparable(f["src_ip"], up.ue_ip) and len(up.ue_ips) == 1):
            self._event(_flow_event(f), "gtpu_ue_address_mismatch", key=up.session_id,
                        detail=f"uplink G-PDUs on TEID {f['teid']} from inner source {f['src_ip']}, but the TEID is"
                               f" bound to UE {up.ue_ip} ({up.session_id})")
        if s is not None and s.upf_ip is not None:
            self._n3_carried.add(s.upf_ip)
        return s

    def silent(self, now_ns: int | None, after_ns: int, final: bool = False) -> pa.Table:
        """Control events for PFCP sessions deleted ``after_ns`` ago (or all, ``final``) that carried no G-PDU
        although their UPF's N3 did carry others (so the capture sees that N3): signalling without a user
        plane.  Judged that late because a session's flows are attributed when they end."""
        due = []
        for sid, t in self._deleted.items():  # in deletion order: the first not due ends the look
            if not final and (now_ns is None or t + after_ns > now_ns):
                break
            due.append(sid)
        for sid in due:
            deleted_at = self._deleted.pop(sid)
            s = self._resolve(sid)
            if s is None or s.gtpu_flows or s.upf_ip not in self._n3_carried:
                continue
            at = max(deleted_at, now_ns or deleted_at)  # the finding's time: when the silence is certain
            self._event({"ts": at, "src_ip": s.smf_ip, "dst_ip": s.upf_ip, "src_port": 8805, "dst_port": 8805},
                        "pfcp_session_without_user_plane", key=s.session_id,
                        detail=f"PFCP session {s.session_id} (SEID {s.cp_seid}, UE {s.ue_ip}) was set up by "
                               f"{s.smf_ip} and deleted without a single G-PDU at UPF {s.upf_ip}, whose N3 carried "
                               "other sessions' traffic")
        return self._take_events()

    # -- output ----------------------------------------------------------------------

    def table(self) -> pa.Table:
        """Every session kept (not the evicted ones: ``take_evicted``)."""
        return _session_table(s for s in self._sessions.values() if s.merged_into is None)

    def take_evicted(self) -> pa.Table:
        """The sessions the limit forgot since the last call, as they were last (``sessions.parquet`` keeps them)."""
        evicted, self._evicted = self._evicted, []
        return _session_table(evicted)

    def context(self, alerts: pa.Table) -> pa.Table:
        """Alerts with ``session``: JSON of the session of their tunnel endpoint, TEID or UE address."""
        if not alerts.num_rows:
            return alerts
        out: list[str | None] = []
        for a in alerts.select(["src_ip", "dst_ip", "teid", "tunnel_src_ip", "tunnel_dst_ip"]).to_pylist():
            s = None
            if a["teid"] is not None:
                s = self._find(("teid", a["tunnel_dst_ip"], a["teid"])) or self._find(
                    ("teid", a["tunnel_src_ip"], a["teid"]))
            s = s or self._find(("ue", a["src_ip"])) or self._find(("ue", a["dst_ip"]))
            out.append(None if s is None else json.dumps(
                {"session_id": s.session_id, "subscriber": s.subscriber, "pdu_session_id": s.pdu_session_id,
                 "dnn": s.dnn, "snssai": s.snssai, "gnb_ip": s.gnb_ip, "ue_ip": s.ue_ip, "upf_ip": s.upf_ip,
                 "state": s.state}, separators=(",", ":")))
        i = alerts.schema.get_field_index("session")
        return alerts.set_column(i, "session", pa.array(out, pa.string()))

    # -- internals -------------------------------------------------------------------

    def _new(self, ts: int, generation: str, created_by: str) -> Session:
        if len(self._sessions) >= self.max_sessions:
            self._evict()
        s = Session(sid=self._next_sid, first_ns=ts, last_ns=ts, generation=generation, created_by=created_by)
        self._sessions[s.sid] = s
        self._next_sid += 1
        return s

    def _evict(self) -> None:
        """Forget ended sessions first, then unanswered ones, then the longest idle, down to EVICT_TO of the
        limit; their keys, pending requests and merged pieces go with them (amortized: once per tenth of it)."""
        live = [s for s in self._sessions.values() if s.merged_into is None]
        count = len(self._sessions) - int(self.max_sessions * EVICT_TO)
        live.sort(key=lambda s: (EVICT_RANK.get(s.state, 2), s.last_ns, s.sid))
        gone = live[:max(count, 1)]
        for s in gone:
            del self._sessions[s.sid]
        self._sessions = {sid: s for sid, s in self._sessions.items() if self._resolve(sid) is not None}
        self._by_key = {k: sid for k, sid in self._by_key.items() if sid in self._sessions}
        self._ue_ips = None
        self._pending = {k: sid for k, sid in self._pending.items() if sid in self._sessions}
        self._evicted += gone
        self.evicted += len(gone)

    def _resolve(self, index: int) -> Session | None:
        s = self._sessions.get(index)
        while s is not None and s.merged_into is not None:
            s = self._sessions.get(s.merged_into)
        return s

    def _find(self, key: tuple[Any, ...]) -> Session | None:
        i = self._by_key.get(key)
        return None if i is None else self._resolve(i)

    def _key(self, s: Session, key: tuple[Any, ...]) -> None:
        """Index ``s`` by ``key``; if another live session holds it, the two are one: merge."""
        other = self._find(key)
        # an address or TEID handed out again after its session ended belongs to a new owner; so does one
        # that two sessions each set up by PFCP claim (the old one's release was not seen, e.g. a core
        # restarted and hands out the same small TEIDs again; or the SGW and PGW sessions of a bearer)
        if (other is not None and other is not s and not (key[0] in ("ue", "teid") and other.state == "released")
                and not _distinct_pfcp(s, other)):
            self._merge(s, other)
        if key[0] == "ue" and key not in self._by_key:
            self._ue_ips = None
        self._by_key[key] = s.sid

    def _merge(self, into: Session, other: Session) -> None:
        for name in ("subscriber", "pdu_session_id", "dnn", "snssai", "ue_ip", "gnb_ip", "dl_teid", "upf_ip",
                     "ul_teid", "ran_ue_ngap_id", "amf_ue_ngap_id", "amf_ip", "smf_ip", "cp_seid", "up_seid"):
            if getattr(into, name) is None:
                setattr(into, name, getattr(other, name))
        if other.generation == "4g":  # a CUPS (Sxa/Sxb) PFCP session of an LTE bearer
            into.generation = "4g"
        into.first_ns = min(into.first_ns, other.first_ns)
        into.last_ns = max(into.last_ns, other.last_ns)
        into.planes |= other.planes
        into.cp_nodes |= other.cp_nodes
        into.ue_ips |= other.ue_ips
        into.messages += other.messages
        into.gtpu_flows += other.gtpu_flows
        into.gtpu_bytes += other.gtpu_bytes
        if other.created_by < into.created_by and other.first_ns <= into.first_ns:
            into.created_by = other.created_by
        other.merged_into = into.sid

    def _pend(self, key: tuple[Any, ...], s: Session) -> None:
        self._pending[key] = s.sid
        if len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))

    def _answer(self, key: tuple[Any, ...]) -> Session | None:
        i = self._pending.pop(key, None)
        return None if i is None else self._resolve(i)

    def _event(self, m: dict[str, Any], kind: str, key: str | None, detail: str | None) -> None:
        self._events.append({"ts": m["ts"], "kind": kind, "src_ip": m.get("src_ip"), "dst_ip": m.get("dst_ip"),
                             "src_port": m.get("src_port"), "dst_port": m.get("dst_port"),
                             "ip_proto": m.get("ip_proto", 132 if kind.startswith("ngap") else
                                               6 if kind.startswith("sbi") else 17),
                             "teid": m.get("teid") if kind.startswith("gtpu") else None,
                             "tunnel_src_ip": m.get("tunnel_src_ip"), "tunnel_dst_ip": m.get("tunnel_dst_ip"),
                             "flow_id": m.get("flow_id"), "key": key, "detail": detail})

    def _take_events(self) -> pa.Table:
        rows, self._events = self._events, []
        return rows_table(rows, CONTROL_EVENT_SCHEMA, ("ts",))


def _distinct_pfcp(a: Session, b: Session) -> bool:
    """Both sessions were set up by a PFCP establishment each: two N4 sessions (F-SEIDs may repeat after a
    restart; a CUPS bearer has one at the SGW and one at the PGW), never one."""
    return a.cp_seid is not None and b.cp_seid is not None


def message_rows(protos: dict[str, pa.Table]) -> list[tuple[str, dict[str, Any]]]:
    """The messages of ``proto.*`` tables as (protocol, row) in time order (ts as ns), read once for
    the session table and the inventory."""
    tables = [(name, t) for name in PROTO_ORDER if (t := protos.get(name)) is not None and t.num_rows]
    rows: list[tuple[int, int, str, dict[str, Any]]] = []
    for rank, (name, t) in enumerate(tables):
        ts = t.column("ts").cast(pa.int64())
        t = t.set_column(0, "ts", ts).select([c for c in t.column_names if c in READ_COLUMNS])
        if len(tables) == 1 and (len(ts) < 2 or bool(np.all(np.diff(ts.to_numpy()) >= 0))):
            return [(name, r) for r in t.to_pylist()]  # the usual batch: one protocol, in time order already
        rows.extend((r["ts"], rank, name, r) for r in t.to_pylist())
    rows.sort(key=lambda x: (x[0], x[1]))  # stable: a table's own order breaks remaining ties
    return [(name, r) for _, _, name, r in rows]


def _flow_event(f: dict[str, Any]) -> dict[str, Any]:
    """A control event's fields from a flow row (made only for the flows that raise one)."""
    return {"ts": f["first_seen"], **{k: f[k] for k in ("src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "teid",
                                                         "tunnel_src_ip", "tunnel_dst_ip", "flow_id")}}


def _comparable(inner_src: str | None, ue_ip: str) -> bool:
    """Whether an uplink source can be judged against the UE's bound address: the same family, and not
    link-local (an IPv4v6 UE also sends from fe80::, and PFCP may give only its IPv4 address)."""
    if not inner_src:
        return False
    try:
        a, b = ipaddress.ip_address(inner_src), ipaddress.ip_address(ue_ip)
    except ValueError:
        return False
    return a.version == b.version and not a.is_link_local and not a.is_unspecified


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema, times: tuple[str, ...]) -> pa.Table:
    """A table of ``schema`` from rows whose ``times`` are ns integers (datetime cannot hold ns)."""
    if not rows:  # most batches' control events: none (building the empty table costs ~0.2 ms)
        return schema.empty_table()
    plain = schema
    for name in times:
        plain = plain.set(plain.get_field_index(name), pa.field(name, pa.int64()))
    table = pa.Table.from_pylist(rows, schema=plain)
    for name in times:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, schema.field(name), table.column(name).cast(schema.field(name).type))
    return table.replace_schema_metadata(schema.metadata)


#: the session table's columns that are a Session attribute of the same name
_SESSION_ATTRIBUTES = ("session_id", "generation", "subscriber", "state", "pdu_session_id", "dnn", "snssai", "ue_ip",
                       "gnb_ip", "dl_teid", "upf_ip", "ul_teid", "ran_ue_ngap_id", "amf_ue_ngap_id", "amf_ip", "smf_ip",
                       "cp_seid", "up_seid", "messages", "gtpu_flows", "gtpu_bytes")


def _session_table(sessions: Iterable[Session]) -> pa.Table:
    """Built column by column (a replay writes every session at its end: ~3x faster than from row dicts)."""
    ss = list(sessions)
    if not ss:
        return SESSION_SCHEMA.empty_table()
    values: dict[str, list[Any]] = {name: [getattr(s, name) for s in ss] for name in _SESSION_ATTRIBUTES}
    values["first_seen"] = [s.first_ns for s in ss]
    values["last_seen"] = [max(s.last_ns, s.first_ns) for s in ss]
    values["planes"] = [sorted(s.planes) for s in ss]
    times = ("first_seen", "last_seen")
    columns = [pa.array(values[f.name], pa.int64()).cast(f.type) if f.name in times  # ns: datetime cannot hold them
               else pa.array(values[f.name], f.type) for f in SESSION_SCHEMA]
    return pa.Table.from_arrays(columns, schema=SESSION_SCHEMA)
