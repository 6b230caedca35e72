"""IPv6 (RFC 8200) with the extension-header chain (hop-by-hop, routing,
fragment, destination options, AH, mobility, HIP, shim6)."""

from __future__ import annotations

import numpy as np

from sensors.protocols.ipv4 import L4
from sensors.protocols.packets import Packets, kept, one_of
from sensors.schema import DecodeStatus

EXT_8OCTET = (0, 43, 60, 135, 139, 140, 253, 254)  # length in 8-octet units, excluding the first 8
FRAGMENT = 44
AH = 51
MAX_EXT = 8


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray) -> L4:
    ok = pk.fits(rows, off, 40)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = kept(ok, rows, off)
    w = pk.words(off, 10)  # version, class, label | payload length, next header, hop limit | addresses
    ok = (w[0] >> 28) == 6
    pk.fail(rows[~ok], DecodeStatus.BAD_IP_VERSION)
    rows, off, w = kept(ok, rows, off, w)
    w1 = w[1]
    plen = (w1 >> 16).astype(np.int64)
    ip_end = np.where(plen == 0, pk.end[rows], off + 40 + plen)  # 0: jumbogram / offload
    nxt = ((w1 >> 8) & 0xFF).astype(np.int64)
    pk.put("ip_version", rows, 6)
    half = w[2:].astype(np.uint64)
    half = (half[0::2] << np.uint64(32)) | half[1::2]  # the addresses' four 64-bit halves
    pk.put_ip("src_ip", rows, half[0], half[1])
    pk.put_ip("dst_ip", rows, half[2], half[3])
    pk.put("ip_ttl", rows, (w1 & 0xFF).astype(np.uint8))
    pk.put("ip_len", rows, np.minimum(ip_end - off, 0xFFFF).astype(np.uint16))
    cur = off + 40
    frag_off = np.zeros(len(rows), dtype=np.uint16)
    is_frag = np.zeros(len(rows), dtype=bool)
    alive = np.ones(len(rows), dtype=bool)
    for _ in range(MAX_EXT):
        ext = alive & (one_of(nxt, EXT_8OCTET) | (nxt == FRAGMENT) | (nxt == AH))
        if not ext.any():
            break
        i = np.flatnonzero(ext)
        short = ~pk.fits(rows[i], cur[i], 8)
        if short.any():
            pk.fail(rows[i[short]], DecodeStatus.TRUNCATED)
            alive[i[short]] = False
            i = i[~short]
        h = nxt[i]
        b0 = pk.u16(cur[i])  # next header, length byte
        length = np.where(h == FRAGMENT, 8, np.where(h == AH, ((b0 & 0xFF) + 2) * 4, ((b0 & 0xFF) + 1) * 8))
        f = i[h == FRAGMENT]
        if len(f):
            fw = pk.u32(cur[f])
            frag_off[f] = ((fw & 0xFFF8) & 0xFFFF).astype(np.uint16)
            is_frag[f] = True
            pk.put("ip_id", rows[f], pk.u32(cur[f] + 4))
        nxt[i] = b0 >> 8
        cur[i] = cur[i] + length
    else:
        deep = alive & (one_of(nxt, EXT_8OCTET) | (nxt == FRAGMENT) | (nxt == AH))
        pk.fail(rows[deep], DecodeStatus.TOO_MANY_LAYERS)
        alive &= ~deep
    pk.put("ip_proto", rows, nxt.astype(np.uint8))
    pk.put("ip_hdr_len", rows, np.minimum(cur - off, 0xFFFF).astype(np.uint16))
    pk.put("ip_is_fragment", rows, is_frag)
    pk.put("ip_frag_offset", rows, frag_off)
    keep = alive & (frag_off == 0)
    return rows[keep], cur[keep], ip_end[keep], nxt[keep]
