"""Diameter (RFC 6733) as the 4G/IMS core uses it: S6a (TS 29.272), Gx (TS 29.212), Cx (TS 29.229).

``dissect``: the header of every packet (3: command code, application id, R
flag), vectorized, on TCP/SCTP port 3868 or SCTP DATA with PPID 46/47.
``messages``: the AVPs that say who talks to whom about whom (4.5, 6.3-6.4,
7.1: Session-Id, Origin/Destination Host and Realm, User-Name, Result-Code
and Experimental-Result-Code).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sensors.protocols.messages import Truncated, select, to_table
from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto

DIAMETER_PPIDS = (46, 47)  # SCTP payload protocol identifiers: Diameter, Diameter over DTLS

PORT = 3868


def dissect(pk: Packets, rows: np.ndarray) -> None:
    on_port = (pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)
    by_ppid = pk.has("sctp_ppid", rows) & one_of(pk.get("sctp_ppid", rows), DIAMETER_PPIDS)
    rows = rows[on_port | by_ppid]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 20 <= end
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    w1 = pk.u32(off + 4)
    ok = ((w0 >> 24) == 1) & ((w0 & 0xFFFFFF) >= 20) & ((w0 & 0x3) == 0)
    rows, off, w1 = rows[ok], off[ok], w1[ok]
    pk.put("app_proto", rows, AppProto.DIAMETER)
    pk.put("diameter_cmd", rows, w1 & 0xFFFFFF)
    pk.put("diameter_is_request", rows, (w1 >> 31) == 1)
    pk.put("diameter_app_id", rows, pk.u32(off + 8))


COMMAND_NAMES = {
    257: "CE", 258: "RA", 271: "AC", 272: "CC", 274: "AS", 275: "ST", 280: "DW", 282: "DP",
    300: "UA", 301: "SA", 302: "LI", 303: "MA", 304: "RT", 305: "PP", 306: "UD", 307: "PU", 308: "SN", 309: "PN",
    316: "UL", 317: "CL", 318: "AI", 319: "ID", 320: "DS", 321: "PU", 322: "RS", 323: "NO",
}
APPLICATION_NAMES = {
    0: "base", 1: "nasreq", 3: "accounting", 4: "credit_control", 16777216: "cx", 16777217: "sh",
    16777236: "rx", 16777238: "gx", 16777251: "s6a", 16777252: "s13", 16777255: "slg", 16777265: "swx",
    16777272: "s6b", 16777291: "slh", 16777302: "sy", 16777308: "s6t", 16777312: "s6c",
}
USER_NAME, SESSION_ID, ORIGIN_HOST, RESULT_CODE, DESTINATION_REALM, DESTINATION_HOST = 1, 263, 264, 268, 283, 293
ORIGIN_REALM, EXPERIMENTAL_RESULT, EXPERIMENTAL_RESULT_CODE = 296, 297, 298
HEADER_BYTES = 20
TEXT_AVPS = {USER_NAME: "user_name", SESSION_ID: "session_id", ORIGIN_HOST: "origin_host",
             ORIGIN_REALM: "origin_realm", DESTINATION_HOST: "destination_host", DESTINATION_REALM: "destination_realm"}


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.diameter``: one row per Diameter message (the first of each TCP segment; every Diameter DATA
    chunk of an SCTP packet)."""
    msgs = select(packets, AppProto.DIAMETER)
    return to_table("diameter", [dict(msgs.common(i), **decode_message(p))
                                 for i, p in msgs.every_payload(DIAMETER_PPIDS)])


def decode_message(data: bytes) -> dict[str, object]:
    if len(data) < HEADER_BYTES:  # a payload cut short: the row says so, it does not stop the batch
        return {"error": f"{len(data)} bytes: shorter than the {HEADER_BYTES}-byte header"}
    length = int.from_bytes(data[1:4], "big")
    flags, cmd = data[4], int.from_bytes(data[5:8], "big")
    app = int.from_bytes(data[8:12], "big")
    request = bool(flags & 0x80)
    name = COMMAND_NAMES.get(cmd)
    out: dict[str, object] = {
        "cmd_code": cmd, "cmd_name": (name + ("R" if request else "A")) if name else f"command_{cmd}",
        "app_id": app, "app_name": APPLICATION_NAMES.get(app, f"application_{app}"), "is_request": request,
        "hop_by_hop": int.from_bytes(data[12:16], "big"), "end_to_end": int.from_bytes(data[16:20], "big"),
    }
    end = min(length, len(data))
    if length > len(data):
        out["error"] = "message runs past the captured payload"
    try:
        _avps(data, HEADER_BYTES, end, out)
    except Truncated as e:
        out["error"] = str(e)
    return out


def _avps(data: bytes, start: int, end: int, out: dict[str, object]) -> None:
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise Truncated(pos)
        code = int.from_bytes(data[pos:pos + 4], "big")
        flags, length = data[pos + 4], int.from_bytes(data[pos + 5:pos + 8], "big")
        head = 12 if flags & 0x80 else 8  # V flag: a Vendor-ID follows
        if length < head or pos + length > end:
            raise Truncated(pos)
        value = data[pos + head:pos + length]
        if code in TEXT_AVPS:
            out[TEXT_AVPS[code]] = value.decode("utf-8", "replace")
        elif code in (RESULT_CODE, EXPERIMENTAL_RESULT_CODE) and len(value) == 4:
            out["result_code"] = int.from_bytes(value, "big")
        elif code == EXPERIMENTAL_RESULT:
            _avps(value, 0, len(value), out)
        pos += (length + 3) & ~3
