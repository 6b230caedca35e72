"""GTP-U v1 (3GPP TS 29.281) with the PDU Session Container extension
(TS 38.415): TEID, message type, QFI, PDU type; G-PDUs are decapsulated.

Recognised on UDP port 2152 in either direction (the other port is free), and
only if the header is consistent, so other traffic on 2152 is left alone.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, kept
from sensors.schema import AppProto, DecodeStatus

PORT = 2152
G_PDU = 255
PDU_SESSION_CONTAINER = 0x85
MAX_EXT = 4
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD

Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def candidates(pk: Packets, rows: np.ndarray) -> np.ndarray:
    sport, dport = pk.get("src_port", rows), pk.get("dst_port", rows)
    return rows[(sport == PORT) | (dport == PORT)]


def looks_like(pk: Packets, rows: np.ndarray) -> np.ndarray:
    """Version 1, protocol type GTP: enough to call a nested payload GTP-U."""
    off = pk.pl_off[rows]
    return (off + 8 <= pk.pl_end[rows]) & ((pk.u8(off) & 0xF0) == 0x30)


def dissect(pk: Packets, rows: np.ndarray) -> Inner:
    """Decode GTP-U headers at the UDP payload; return G-PDU inner packets."""
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off, end = kept(ok, rows, off, end)
    w0, teid = pk.words(off, 2)  # flags, message type, length | TEID
    flags = w0 >> 24
    msg = ((w0 >> 16) & 0xFF).astype(np.int64)
    length = (w0 & 0xFFFF).astype(np.int64)
    # version 1, protocol type GTP (not GTP'), length within the UDP payload
    udp_len = pk.get("payload_len", rows).astype(np.int64)
    ok = ((flags >> 5) == 1) & ((flags & 0x10) != 0) & (8 + length <= udp_len)
    rows, off, end, flags, msg, length, teid = kept(ok, rows, off, end, flags, msg, length, teid)
    pk.put("app_proto", rows, AppProto.GTPU)
    pk.put("gtpu_msg_type", rows, msg.astype(np.uint8))
    pk.put("teid", rows, teid)
    hdr = np.full(len(rows), 8, dtype=np.int64)
    opt = (flags & 0x07) != 0
    o = np.flatnonzero(opt)
    short = ~pk.fits(rows[o], off[o], 12)
    pk.fail(rows[o[short]], DecodeStatus.TRUNCATED)
    alive = np.ones(len(rows), dtype=bool)
    alive[o[short]] = False
    o = o[~short]
    hdr[o] = 12
    next_ext = np.zeros(len(rows), dtype=np.int64)
    next_ext[o] = pk.u8(off[o] + 11)
    for _ in range(MAX_EXT):
        e = np.flatnonzero(alive & (next_ext != 0))
        if not len(e):
            break
        p = off[e] + hdr[e]
        elen = pk.u8(p).astype(np.int64) * 4
        bad = elen == 0
        pk.fail(rows[e[bad]], DecodeStatus.BAD_HEADER_LENGTH)
        short = ~bad & ~pk.fits(rows[e], p, elen)
        pk.fail(rows[e[short]], DecodeStatus.TRUNCATED)
        alive[e[bad | short]] = False
        good = ~(bad | short)
        e, p, elen = e[good], p[good], elen[good]
        psc = next_ext[e] == PDU_SESSION_CONTAINER
        s, sp = e[psc], p[psc]
        pk.put("gtpu_pdu_type", rows[s], (pk.u8(sp + 1) >> 4).astype(np.uint8))
        pk.put("gtpu_qfi", rows[s], (pk.u8(sp + 2) & 0x3F).astype(np.uint8))
        next_ext[e] = pk.u8(p + elen - 1)
        hdr[e] += elen
    else:
        deep = alive & (next_ext != 0)
        pk.fail(rows[deep], DecodeStatus.TOO_MANY_LAYERS)
        alive &= ~deep
    gpdu = alive & (msg == G_PDU)
    rows, inner = rows[gpdu], (off + hdr)[gpdu]
    has_bytes = inner < pk.end[rows]
    nibble = pk.u8(inner) >> 4
    etype = np.select([nibble == 4, nibble == 6], [ETH_IPV4, ETH_IPV6], 0).astype(np.int64)
    unknown = has_bytes & (etype == 0)
    pk.fail(rows[unknown], DecodeStatus.UNKNOWN_ENCAPSULATION)
    keep = etype != 0
    return rows[keep], inner[keep], etype[keep]
