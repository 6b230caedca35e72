"""GTP-C on UDP 2123: GTPv2-C (3GPP TS 29.274) and GTPv1-C (TS 29.060).

``dissect``: the header of every packet (TS 29.274 5.1, TS 29.060 6: version,
message type, TEID, sequence number), vectorized.
``messages``: the GTPv2-C information elements of a session (8: IMSI,
MSISDN, MEI, APN, PDN Address Allocation, Cause, EPS Bearer ID, F-TEID, and
Bearer Contexts with their F-TEIDs); other IEs are kept as opaque bytes.
GTPv1-C messages get their header fields only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from sensors.protocols.messages import Truncated, ip_text, labels, select, tbcd, to_table
from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 2123


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    flags = w0 >> 24
    version = flags >> 5
    length = (w0 & 0xFFFF).astype(np.int64)
    udp_len = pk.get("payload_len", rows).astype(np.int64)
    v2 = (version == 2) & (4 + length <= udp_len)
    v1 = (version == 1) & ((flags & 0x10) != 0) & (8 + length <= udp_len)
    rows, off, w0, flags, v2 = rows[v1 | v2], off[v1 | v2], w0[v1 | v2], flags[v1 | v2], v2[v1 | v2]
    pk.put("app_proto", rows, AppProto.GTPC)
    pk.put("gtpc_version", rows, np.where(v2, 2, 1).astype(np.uint8))
    pk.put("gtpc_msg_type", rows, ((w0 >> 16) & 0xFF).astype(np.uint8))
    t_flag = v2 & ((flags & 0x08) != 0)
    has_teid = ~v2 | t_flag
    pk.put("gtpc_teid", rows[has_teid], pk.u32(off[has_teid] + 4))
    # v2: 3-byte sequence after the TEID (or right after the length); v1: 2 bytes if S flag
    seq_v2 = pk.u32(np.where(t_flag, off + 8, off + 4)) >> 8
    v1_seq = ~v2 & ((flags & 0x02) != 0)
    seq = np.where(v2, seq_v2, pk.u16(off + 8).astype(np.uint32))
    keep = v2 | v1_seq
    pk.put("gtpc_seq", rows[keep], seq[keep])


MESSAGE_NAMES = {
    1: "echo_request", 2: "echo_response", 3: "version_not_supported",
    32: "create_session_request", 33: "create_session_response", 34: "modify_bearer_request",
    35: "modify_bearer_response", 36: "delete_session_request", 37: "delete_session_response",
    38: "change_notification_request", 39: "change_notification_response",
    64: "modify_bearer_command", 65: "modify_bearer_failure_indication", 66: "delete_bearer_command",
    67: "delete_bearer_failure_indication", 68: "bearer_resource_command", 69: "bearer_resource_failure_indication",
    70: "downlink_data_notification_failure_indication", 71: "trace_session_activation",
    72: "trace_session_deactivation", 73: "stop_paging_indication",
    95: "create_bearer_request", 96: "create_bearer_response", 97: "update_bearer_request",
    98: "update_bearer_response", 99: "delete_bearer_request", 100: "delete_bearer_response",
    101: "delete_pdn_connection_set_request", 102: "delete_pdn_connection_set_response",
    128: "identification_request", 129: "identification_response", 130: "context_request",
    131: "context_response", 132: "context_acknowledge", 133: "forward_relocation_request",
    134: "forward_relocation_response", 162: "suspend_notification", 163: "suspend_acknowledge",
    166: "create_indirect_data_forwarding_tunnel_request", 167: "create_indirect_data_forwarding_tunnel_response",
    170: "release_access_bearers_request", 171: "release_access_bearers_response",
    176: "downlink_data_notification", 177: "downlink_data_notification_acknowledge",
}
RESPONSES = {2, 3, 33, 35, 37, 39, 96, 98, 100, 102, 129, 131, 132, 134, 163, 167, 171, 177}
# IE types (8.1)
IMSI, CAUSE, APN, EBI, MEI, MSISDN, PAA, F_TEID, BEARER_CONTEXT = 1, 2, 71, 73, 75, 76, 79, 87, 93


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.gtpc``: one row per GTP-C message in the batch."""
    msgs = select(packets, AppProto.GTPC)
    return to_table("gtpc", [dict(msgs.common(i), **decode_message(p)) for i, p in enumerate(msgs.payloads)])


def decode_message(data: bytes) -> dict[str, Any]:
    flags, mtype, length = data[0], data[1], int.from_bytes(data[2:4], "big")
    version = flags >> 5
    out: dict[str, Any] = {"version": version, "msg_type": mtype, "fteids": [], "ebis": [], "unknown_ies": []}
    if version != 2:
        out["msg_name"] = f"v1_type_{mtype}"
        out["teid"] = int.from_bytes(data[4:8], "big")
        return out
    out["msg_name"] = MESSAGE_NAMES.get(mtype, f"type_{mtype}")
    out["is_request"] = mtype not in RESPONSES
    if flags & 0x08:
        out["teid"] = int.from_bytes(data[4:8], "big")
        out["seq"] = int.from_bytes(data[8:11], "big")
        start = 12
    else:
        out["seq"] = int.from_bytes(data[4:7], "big")
        start = 8
    end = min(4 + length, len(data))
    if 4 + length > len(data):
        out["error"] = "message runs past the captured payload"
    try:
        _walk(data, start, end, out, None)
    except Truncated as e:
        out["error"] = str(e)
    return out


def _ies(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """(type, value) of the IEs in ``data[start:end]`` (type 1, length 2, spare/instance 1)."""
    out, pos = [], start
    while pos < end:
        if pos + 4 > end:
            raise Truncated(pos)
        length = int.from_bytes(data[pos + 1:pos + 3], "big")
        if pos + 4 + length > end:
            raise Truncated(pos)
        out.append((data[pos], data[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


def _walk(data: bytes, start: int, end: int, out: dict[str, Any], ebi: int | None) -> None:
    """IEs into ``out``; ``ebi``: the bearer whose Bearer Context is walked (None at message level)."""
    groups = []
    for ie, value in _ies(data, start, end):
        if ie == IMSI:
            out["imsi"] = tbcd(value)
        elif ie == MSISDN:
            out["msisdn"] = tbcd(value)
        elif ie == MEI:
            out["mei"] = tbcd(value)
        elif ie == APN:
            out["apn"] = labels(value)
        elif ie == CAUSE and value:
            out["cause"] = value[0]
        elif ie == EBI and value:
            out["ebis"].append(value[0] & 0x0F)
        elif ie == PAA and value:
            pdn_type = value[0] & 0x07
            if pdn_type in (1, 3):  # IPv4 (after the IPv6 prefix length and address for IPv4v6)
                raw = value[1:5] if pdn_type == 1 else value[18:22]
                out["ue_ip"] = ip_text(raw) if len(raw) == 4 else None
            elif pdn_type == 2 and len(value) >= 18:
                out["ue_ip"] = ip_text(value[2:18])
        elif ie == F_TEID and len(value) >= 5:
            flags = value[0]
            addr = value[5:9] if flags & 0x80 else value[5:21] if flags & 0x40 else b""
            out["fteids"].append({"interface_type": flags & 0x3F, "teid": int.from_bytes(value[1:5], "big"),
                                 "ip": ip_text(addr), "ebi": ebi})
        elif ie == BEARER_CONTEXT:
            groups.append(value)
        else:
            out["unknown_ies"].append({"type": ie, "value": value})
    for value in groups:  # a Bearer Context's F-TEIDs belong to its bearer: find its EBI first
        inner = [v for t, v in _ies(value, 0, len(value)) if t == EBI and v]
        _walk(value, 0, len(value), out, inner[0][0] & 0x0F if inner else 0)
    out["ebis"] = list(dict.fromkeys(out["ebis"]))
