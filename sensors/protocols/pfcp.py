"""PFCP, the N4/Sxa/Sxb protocol between SMF and UPF (3GPP TS 29.244).

``dissect``: the header of every packet (7.2.2: version, message type, SEID,
sequence), vectorized, on UDP port 8805 in either direction.
``messages``: the information elements a session needs (8.2: Node ID, F-SEID,
F-TEID, UE IP Address, PDR/FAR/QER/URR ids, Network Instance, Apply Action,
Outer Header Creation, Cause, Recovery Time Stamp, User ID), walking grouped
IEs for every message of a batch at once; other IEs are kept as opaque bytes,
never fatal.  The User ID IE names the subscriber (IMSI, IMEI, MSISDN...): it
becomes ``supi``/``gpsi``/``pei`` (pseudonymised before output) and is never
kept as raw bytes, readable or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.protocols.messages import (
    Ies,
    addresses,
    be_uint,
    first_unique,
    from_columns,
    labels,
    list_column,
    payload_buffer,
    scan_ies,
    select,
    tbcd,
    texts,
    values,
)
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
CAUSE, SOURCE_INTERFACE, F_TEID, NETWORK_INSTANCE, DESTINATION_INTERFACE, APPLY_ACTION = 19, 20, 21, 22, 42, 44
PDR_ID, F_SEID, NODE_ID, URR_ID, OUTER_HEADER_CREATION, UE_IP_ADDRESS = 56, 57, 60, 81, 84, 93
RECOVERY_TIME_STAMP, FAR_ID, QER_ID, USER_ID = 96, 108, 109, 141
GROUPED = {CREATE_PDR, PDI, CREATE_FAR, FORWARDING_PARAMETERS, CREATE_QER, CREATED_PDR, UPDATE_PDR, UPDATE_FAR,
           UPDATE_FORWARDING_PARAMETERS, 6, 13, 14, 15, 16, 17, 18}  # + Create/Update/Remove URR/QER, Remove PDR/FAR


#: groups whose rules' ids (PDR, FAR, source interface) apply to the IEs inside them
INHERITS_CONTEXT = (PDI, FORWARDING_PARAMETERS, UPDATE_FORWARDING_PARAMETERS)
#: IE type -> the least value length it is read with; shorter ones are kept as unknown
MIN_LENGTH = {PDR_ID: 2, FAR_ID: 4, QER_ID: 4, URR_ID: 4, SOURCE_INTERFACE: 1, DESTINATION_INTERFACE: 1, NODE_ID: 2, CAUSE: 1,
              RECOVERY_TIME_STAMP: 4, F_SEID: 9, NETWORK_INSTANCE: 1, APPLY_ACTION: 1, UE_IP_ADDRESS: 1,
              F_TEID: 1, OUTER_HEADER_CREATION: 6}
NTP_TO_UNIX_S = 2_208_988_800
_GROUPED = np.array(sorted(GROUPED))
_NONE = np.array(None, dtype=object)


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.pfcp``: one row per PFCP message in the batch, the IEs of all walked at once."""
    msgs = select(packets, AppProto.PFCP)
    return from_columns("pfcp", msgs, _columns(msgs.payload))


def decode_message(data: bytes) -> dict[str, Any]:
    """One message's fields (tests, tools); the same code as :func:`messages`."""
    cols = _columns(pa.array([data], pa.binary()))
    return {k: v[0].as_py() for k, v in cols.items()}


def _columns(payload: pa.BinaryArray) -> dict[str, pa.Array]:
    n = len(payload)
    buf, start, stop = payload_buffer(payload)
    at = np.minimum(start, len(buf) - 16)
    flags, mtype = buf[at], buf[at + 1].astype(np.int64)
    length = (buf[at + 2].astype(np.int64) << 8) | buf[at + 3]
    has_seid = (flags & 0x01) != 0
    seq_at = np.where(has_seid, at + 12, at + 4)
    end = np.minimum(start + 4 + length, stop)
    ies = scan_ies(buf, np.minimum(start + np.where(has_seid, 16, 8), end), end, type_bytes=2, header=4,
                   grouped=_GROUPED)
    error = np.where(ies.error_at >= 0, ies.error_at - start, -1)
    errors = [f"truncated IE at byte {e}" if e >= 0 else None for e in error.tolist()]
    for i in np.flatnonzero((start + 4 + length > stop) & (error < 0)).tolist():
        errors[i] = "message runs past the captured payload"
    names = [MESSAGE_NAMES.get(t, f"type_{t}") for t in mtype.tolist()]
    cols: dict[str, pa.Array] = {
        "msg_type": pa.array(mtype, pa.uint8()), "msg_name": pa.array(names, pa.string()),
        "is_request": pa.array(np.where(mtype < 50, mtype % 2 == 1, mtype % 2 == 0)),
        "seid": pa.array(be_uint(buf, at + 4, 8), pa.uint64(), mask=~has_seid),
        "seq": pa.array(be_uint(buf, seq_at, 3), pa.uint32()),
        "error": pa.array(errors, pa.string()),
    }
    cols.update(_information_elements(ies, n))
    return cols


def _information_elements(ies: Ies, n: int) -> dict[str, pa.Array]:
    typ, length = ies.type, ies.length
    leaf = ~np.isin(typ, _GROUPED) | (typ & 0x8000 != 0)
    readable = np.zeros(len(typ), dtype=bool)
    for t, least in MIN_LENGTH.items():
        readable |= (typ == t) & (length >= least)
    readable &= leaf
    readable |= leaf & (typ == USER_ID)  # an identity: never kept as raw bytes, even when malformed
    cols: dict[str, pa.Array] = {}
    j = np.flatnonzero(readable & (typ == NETWORK_INSTANCE))
    names = pa.array(texts(ies, j, labels), pa.string())
    named = np.asarray(pc.greater(pc.utf8_length(names), 0).to_numpy(zero_copy_only=False), dtype=bool)
    readable[j[~named]] = False  # no name in it: kept as unknown
    j, names = j[named], names.filter(pa.array(named))
    keep = first_unique(ies.msg[j], names.dictionary_encode().indices.to_numpy())
    cols["network_instances"] = list_column(n, ies.msg[j][keep], names.filter(pa.array(keep)))

    def first(t: int) -> tuple[np.ndarray, np.ndarray]:
        return ies.first(readable & (typ == t))

    def scalar(values: np.ndarray | list[Any] | pa.Array, msgs: np.ndarray, kind: pa.DataType) -> pa.Array:
        full = np.zeros(n, dtype=object)
        full[msgs] = list(values) if not isinstance(values, np.ndarray) else values.tolist()
        mask = np.ones(n, dtype=bool)
        mask[msgs] = False
        return pa.array(full, kind, mask=mask)

    m, i = first(NODE_ID)
    kind = ies.u8(ies.v0[i]) & 0x0F
    is_ip = (kind == 0) & (length[i] >= 5) | (kind == 1) & (length[i] >= 17)
    node = np.array(texts(ies, i, lambda raw: labels(raw[1:])), dtype=object)
    if is_ip.any():
        node[is_ip] = addresses(ies, ies.v0[i][is_ip] + 1, kind[is_ip] == 1).to_pylist()
    cols["node_id"] = scalar(np.where((kind <= 1) & ~is_ip, _NONE, node), m, pa.string())
    m, i = first(CAUSE)
    cols["cause"] = scalar(ies.u8(ies.v0[i]), m, pa.uint8())
    m, i = first(RECOVERY_TIME_STAMP)
    cols["recovery_ts"] = scalar(ies.uint(ies.v0[i], 4).astype(np.int64) - NTP_TO_UNIX_S, m, pa.int64()).cast(
        pa.timestamp("s", tz="UTC"))
    m, i = first(F_SEID)
    cols["fseid_seid"] = scalar(ies.uint(ies.v0[i] + 1, 8), m, pa.uint64())
    cols["fseid_ip"] = scalar(_ip_or_null(ies, i, 9, v4_flag=0x02, v6_flag=0x01), m, pa.string())

    m, i = first(USER_ID)
    user = [_user_id(raw) for raw in (ies.buf[a:b].tobytes() for a, b in zip(ies.v0[i].tolist(),
                                                                             ies.v1[i].tolist()))]
    for k, name in enumerate(("supi", "gpsi", "pei")):
        cols[name] = scalar([u[k] for u in user], m, pa.string())

    ctx = _context(ies, n, readable)
    j = np.flatnonzero(readable & (typ == F_TEID))
    fl = ies.u8(ies.v0[j])
    choose = (fl & 0x04) != 0
    has_teid = ~choose & (length[j] >= 5)
    scope = _scope(ies, j)
    fteid = pa.StructArray.from_arrays(
        [pa.array(ies.uint(ies.v0[j] + 1, 4), pa.uint32(), mask=~has_teid),
         pa.array(np.where(has_teid, _ip_or_null(ies, j, 5, v4_flag=0x01, v6_flag=0x02), _NONE), pa.string()),
         pa.array(ctx["pdr_id"][scope], pa.uint16(), mask=ctx["pdr_id"][scope] < 0),
         pa.array(ctx["source_interface"][scope], pa.uint8(), mask=ctx["source_interface"][scope] < 0),
         pa.array(choose)],
        names=["teid", "ip", "pdr_id", "source_interface", "choose"])
    cols["fteids"] = list_column(n, ies.msg[j], fteid)

    j = np.flatnonzero(readable & (typ == OUTER_HEADER_CREATION))
    gtp = (ies.u8(ies.v0[j]) & 0x03) != 0  # GTP-U/UDP/IPv4 or /IPv6; other kinds carry no TEID
    j = j[gtp]
    far = ctx["far_id"][_scope(ies, j)]
    ip = _ip_or_null(ies, j, 6, v4_flag=0x15, v6_flag=0x2A)
    towards = ctx["destination_interface"][_scope(ies, j)]
    headers = pa.StructArray.from_arrays(
        [pa.array(ies.uint(ies.v0[j] + 2, 4), pa.uint32()), pa.array(ip, pa.string()),
         pa.array(far, pa.uint32(), mask=far < 0), pa.array(towards, pa.uint8(), mask=towards < 0)],
        names=["teid", "ip", "far_id", "destination_interface"])
    cols["outer_headers"] = list_column(n, ies.msg[j], headers)

    j = np.flatnonzero(readable & (typ == UE_IP_ADDRESS))
    ue = _ip_or_null(ies, j, 1, v4_flag=0x02, v6_flag=0x01)
    j, ue = j[ue != None], ue[ue != None]  # noqa: E711 (element-wise)
    keep = first_unique(ies.msg[j], pa.array(ue, pa.string()).dictionary_encode().indices.to_numpy())
    cols["ue_ips"] = list_column(n, ies.msg[j][keep], pa.array(ue[keep], pa.string()))

    for name, t, nbytes, kind in (("pdr_ids", PDR_ID, 2, pa.uint16()), ("far_ids", FAR_ID, 4, pa.uint32()),
                                  ("qer_ids", QER_ID, 4, pa.uint32()), ("urr_ids", URR_ID, 4, pa.uint32())):
        j = np.flatnonzero(readable & (typ == t))
        ids = ies.uint(ies.v0[j], nbytes)
        keep = first_unique(ies.msg[j], ids)  # a rule and the references to it
        cols[name] = list_column(n, ies.msg[j][keep], pa.array(ids[keep], kind))

    j = np.flatnonzero(readable & (typ == APPLY_ACTION))
    lo = ies.u8(ies.v0[j])
    action = np.where(length[j] > 1, lo | (ies.u8(ies.v0[j] + 1) << 8), lo)  # flag octets 5, 6: low byte first
    cols["apply_actions"] = list_column(n, ies.msg[j], pa.array(action, pa.uint16()))

    j = np.flatnonzero(leaf & ~readable)
    unknown = pa.StructArray.from_arrays([pa.array(typ[j], pa.uint16()), values(ies, j)], names=["type", "value"])
    cols["unknown_ies"] = list_column(n, ies.msg[j], unknown)
    return cols


#: User ID flags (8.2.101) in field order, and how each identity is spelled (ingest.privacy.canonical_identity)
USER_ID_FIELDS = ((0x01, "imsi-", 0), (0x02, "imei-", 2), (0x04, "msisdn-", 1), (0x08, "", 0),
                  (0x10, "", 0), (0x20, "", 1), (0x40, "", 2))


def _user_id(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(supi, gpsi, pei) of a User ID IE: IMSI/IMEI/MSISDN in TBCD, NAI/SUPI/GPSI/PEI as text.
    A field cut short ends the walk; what came before it stands."""
    found: list[str | None] = [None, None, None]
    if not raw:
        return None, None, None
    flags, at = raw[0], 1
    for bit, prefix, slot in USER_ID_FIELDS:
        if not flags & bit:
            continue
        if at >= len(raw) or at + 1 + raw[at] > len(raw):
            break
        value, at = raw[at + 1:at + 1 + raw[at]], at + 1 + raw[at]
        text = prefix + tbcd(value) if prefix else value.decode("utf-8", "replace")
        if found[slot] is None and text.strip("-"):
            found[slot] = text
    return found[0], found[1], found[2]


def _scope(ies: Ies, j: np.ndarray) -> np.ndarray:
    """Scope of IEs ``j``: their group's IE index, or ``len(ies) + message`` at the top level."""
    return np.where(ies.parent[j] >= 0, ies.parent[j], len(ies.type) + ies.msg[j])


def _context(ies: Ies, n: int, readable: np.ndarray) -> dict[str, np.ndarray]:
    """Per scope, the rule ids its IEs belong to: the group's own PDR/FAR id and source/destination interface, or
    (PDI, Forwarding Parameters) those of the rule around it; -1 where none."""
    size = len(ies.type) + n
    out: dict[str, np.ndarray] = {}
    for name, t, read in (("pdr_id", PDR_ID, lambda j: ies.uint(ies.v0[j], 2)),
                          ("far_id", FAR_ID, lambda j: ies.uint(ies.v0[j], 4)),
                          ("source_interface", SOURCE_INTERFACE, lambda j: ies.u8(ies.v0[j]) & 0x0F),
                          ("destination_interface", DESTINATION_INTERFACE, lambda j: ies.u8(ies.v0[j]) & 0x0F)):
        value = np.full(size, -1, dtype=np.int64)
        j = np.flatnonzero(readable & (ies.type == t))
        value[_scope(ies, j)] = np.asarray(read(j), dtype=np.int64)  # the last one of a group wins
        for level in range(1, int(ies.depth.max(initial=0)) + 1):
            g = np.flatnonzero((ies.depth == level - 1) & np.isin(ies.type, INHERITS_CONTEXT))
            g = g[value[g] < 0]
            value[g] = value[_scope(ies, g)]
        out[name] = value
    return out


def _ip_or_null(ies: Ies, j: np.ndarray, skip: int, *, v4_flag: int, v6_flag: int) -> np.ndarray:
    """The address after ``skip`` bytes of IEs ``j`` whose first octet flags it (IPv4 first when both
    are flagged), None where absent."""
    flags = ies.u8(ies.v0[j])
    v4 = (flags & v4_flag) != 0
    v6 = ~v4 & ((flags & v6_flag) != 0)
    room = ies.length[j] >= skip + np.where(v6, 16, 4)
    text = np.array(addresses(ies, ies.v0[j] + skip, v6).to_pylist(), dtype=object)
    return np.where((v4 | v6) & room, text, _NONE)
