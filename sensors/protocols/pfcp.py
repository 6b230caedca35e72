"""PFCP, the N4/Sxa/Sxb protocol between SMF and UPF (3GPP TS 29.244).

``dissect``: the header of every packet (7.2.2: version, message type, SEID,
sequence), vectorized, on UDP port 8805 in either direction.
``messages``: the information elements a session needs (8.2: Node ID, F-SEID,
F-TEID, UE IP Address, PDR/FAR/QER/URR ids, Network Instance, Apply Action,
Outer Header Creation, Cause, Recovery Time Stamp), walking grouped IEs; other
IEs are kept as opaque bytes, never fatal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from sensors.protocols.messages import Truncated, ip_text, labels, select, tlvs, to_table
from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 8805


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off, end = rows[ok], off[ok], end[ok]
    w0 = pk.u32(off)
    flags = w0 >> 24
    length = (w0 & 0xFFFF).astype(np.int64)
    s_flag = (flags & 0x01) != 0
    ok = ((flags >> 5) == 1) & (length >= 4) & (4 + length <= pk.get("payload_len", rows).astype(np.int64) + 0)
    ok &= ~s_flag | (off + 16 <= end)
    rows, off, w0, s_flag = rows[ok], off[ok], w0[ok], s_flag[ok]
    pk.put("app_proto", rows, AppProto.PFCP)
    pk.put("pfcp_msg_type", rows, ((w0 >> 16) & 0xFF).astype(np.uint8))
    s = np.flatnonzero(s_flag)
    pk.put("pfcp_seid", rows[s], pk.u64(off[s] + 4))
    seq_at = np.where(s_flag, off + 12, off + 4)
    pk.put("pfcp_seq", rows, pk.u32(seq_at) >> 8)


MESSAGE_NAMES = {
    1: "heartbeat_request", 2: "heartbeat_response", 3: "pfd_management_request", 4: "pfd_management_response",
    5: "association_setup_request", 6: "association_setup_response", 7: "association_update_request",
    8: "association_update_response", 9: "association_release_request", 10: "association_release_response",
    11: "version_not_supported_response", 12: "node_report_request", 13: "node_report_response",
    14: "session_set_deletion_request", 15: "session_set_deletion_response",
    16: "session_set_modification_request", 17: "session_set_modification_response",
    50: "session_establishment_request", 51: "session_establishment_response",
    52: "session_modification_request", 53: "session_modification_response",
    54: "session_deletion_request", 55: "session_deletion_response",
    56: "session_report_request", 57: "session_report_response",
}
# IE types (Table 8.1.2-1)
CREATE_PDR, PDI, CREATE_FAR, FORWARDING_PARAMETERS, CREATE_QER, CREATED_PDR = 1, 2, 3, 4, 7, 8
UPDATE_PDR, UPDATE_FAR, UPDATE_FORWARDING_PARAMETERS = 9, 10, 11
CAUSE, SOURCE_INTERFACE, F_TEID, NETWORK_INSTANCE, APPLY_ACTION = 19, 20, 21, 22, 44
PDR_ID, F_SEID, NODE_ID, URR_ID, OUTER_HEADER_CREATION, UE_IP_ADDRESS = 56, 57, 60, 81, 84, 93
RECOVERY_TIME_STAMP, FAR_ID, QER_ID = 96, 108, 109
GROUPED = {CREATE_PDR, PDI, CREATE_FAR, FORWARDING_PARAMETERS, CREATE_QER, CREATED_PDR, UPDATE_PDR, UPDATE_FAR,
           UPDATE_FORWARDING_PARAMETERS, 6, 13, 14, 15, 16, 17, 18}  # + Create/Update/Remove URR/QER, Remove PDR/FAR
#: PFCP and GTP-C timestamps count seconds from 1900 (NTP era 0)
NTP_EPOCH = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.pfcp``: one row per PFCP message in the batch."""
    msgs = select(packets, AppProto.PFCP)
    return to_table("pfcp", [dict(msgs.common(i), **decode_message(p)) for i, p in enumerate(msgs.payloads)])


def decode_message(data: bytes) -> dict[str, Any]:
    flags, mtype, length = data[0], data[1], int.from_bytes(data[2:4], "big")
    has_seid = bool(flags & 0x01)
    out: dict[str, Any] = {
        "msg_type": mtype, "msg_name": MESSAGE_NAMES.get(mtype, f"type_{mtype}"),
        "is_request": (mtype % 2 == 1) if mtype < 50 else (mtype % 2 == 0),
        "fteids": [], "ue_ips": [], "outer_headers": [], "pdr_ids": [], "far_ids": [], "qer_ids": [],
        "urr_ids": [], "network_instances": [], "apply_actions": [], "unknown_ies": [],
    }
    if has_seid:
        out["seid"] = int.from_bytes(data[4:12], "big")
        out["seq"] = int.from_bytes(data[12:15], "big")
        start = 16
    else:
        out["seq"] = int.from_bytes(data[4:7], "big")
        start = 8
    end = min(4 + length, len(data))
    if 4 + length > len(data):
        out["error"] = "message runs past the captured payload"
    try:
        _walk(data, start, end, out, {})
    except Truncated as e:
        out["error"] = str(e)
    for key in ("ue_ips", "pdr_ids", "far_ids", "qer_ids", "urr_ids", "network_instances"):
        out[key] = list(dict.fromkeys(out[key]))  # a rule and its reference
    return out


def _walk(data: bytes, start: int, end: int, out: dict[str, Any], ctx: dict[str, int]) -> None:
    """IEs of ``data[start:end]`` into ``out``; ``ctx`` carries the enclosing rule's PDR/FAR id and interface."""
    inner_ctx = dict(ctx)
    children: list[tuple[int, int, int]] = []
    tunnels: list[tuple[int, bytes]] = []  # read once the group's own ids (PDR, FAR, interface) are known
    for ie, v0, v1, _ in tlvs(data, start, end, 4, 2):
        if ie & 0x8000:  # vendor IE: 2 more bytes of enterprise id, value opaque
            out["unknown_ies"].append({"type": ie, "value": data[v0:v1]})
            continue
        value = data[v0:v1]
        if ie in GROUPED:
            children.append((ie, v0, v1))
        elif ie == PDR_ID and len(value) >= 2:
            inner_ctx["pdr_id"] = int.from_bytes(value[:2], "big")
            out["pdr_ids"].append(inner_ctx["pdr_id"])
        elif ie == FAR_ID and len(value) >= 4:
            inner_ctx["far_id"] = int.from_bytes(value[:4], "big")
            out["far_ids"].append(inner_ctx["far_id"])
        elif ie == SOURCE_INTERFACE and value:
            inner_ctx["source_interface"] = value[0] & 0x0F
        elif ie == QER_ID and len(value) >= 4:
            out["qer_ids"].append(int.from_bytes(value[:4], "big"))
        elif ie == URR_ID and len(value) >= 4:
            out["urr_ids"].append(int.from_bytes(value[:4], "big"))
        elif ie == NODE_ID and value:
            kind = value[0] & 0x0F
            out["node_id"] = ip_text(value[1:]) if kind in (0, 1) else labels(value[1:])
        elif ie == CAUSE and value:
            out["cause"] = value[0]
        elif ie == RECOVERY_TIME_STAMP and len(value) >= 4:
            out["recovery_ts"] = NTP_EPOCH + dt.timedelta(seconds=int.from_bytes(value[:4], "big"))
        elif ie == F_SEID and len(value) >= 9:
            out["fseid_seid"] = int.from_bytes(value[1:9], "big")
            out["fseid_ip"] = _v4_or_v6(value[9:], bool(value[0] & 0x02), bool(value[0] & 0x01))
        elif ie == NETWORK_INSTANCE and labels(value):
            out["network_instances"].append(labels(value))
        elif ie == APPLY_ACTION and value:
            out["apply_actions"].append(int.from_bytes(value[:2], "little") if len(value) > 1 else value[0])
        elif ie == UE_IP_ADDRESS and value:
            ip = _v4_or_v6(value[1:], bool(value[0] & 0x02), bool(value[0] & 0x01))
            if ip:
                out["ue_ips"].append(ip)
        elif ie in (F_TEID, OUTER_HEADER_CREATION):
            tunnels.append((ie, value))
        else:
            out["unknown_ies"].append({"type": ie, "value": value})
    for ie, value in tunnels:
        if ie == F_TEID and value:
            _fteid(value, out, inner_ctx)
        elif ie == OUTER_HEADER_CREATION and len(value) >= 2:
            _outer_header(value, out, inner_ctx)
    for ie, v0, v1 in children:
        child_ctx = dict(inner_ctx) if ie in (PDI, FORWARDING_PARAMETERS, UPDATE_FORWARDING_PARAMETERS) else {}
        _walk(data, v0, v1, out, child_ctx)


def _fteid(value: bytes, out: dict[str, Any], ctx: dict[str, int]) -> None:
    flags = value[0]
    choose = bool(flags & 0x04)
    entry: dict[str, Any] = {"pdr_id": ctx.get("pdr_id"), "source_interface": ctx.get("source_interface"),
                                "choose": choose}
    if not choose and len(value) >= 5:
        entry["teid"] = int.from_bytes(value[1:5], "big")
        entry["ip"] = _v4_or_v6(value[5:], bool(flags & 0x01), bool(flags & 0x02))
    out["fteids"].append(entry)


def _outer_header(value: bytes, out: dict[str, Any], ctx: dict[str, int]) -> None:
    desc = value[0]
    gtp = bool(desc & 0x03)  # GTP-U/UDP/IPv4 or /IPv6
    if not gtp or len(value) < 6:
        return
    teid = int.from_bytes(value[2:6], "big")
    v4 = bool(desc & 0x15)  # GTP-U/UDP/IPv4, UDP/IPv4, IPv4
    v6 = bool(desc & 0x2A)
    out["outer_headers"].append({"teid": teid, "ip": _v4_or_v6(value[6:], v4, v6),
                                   "far_id": ctx.get("far_id")})


def _v4_or_v6(raw: bytes, v4: bool, v6: bool) -> str | None:
    if v4 and len(raw) >= 4:
        return ip_text(raw[:4])
    if v6 and len(raw) >= 16:
        return ip_text(raw[:16])
    return None
