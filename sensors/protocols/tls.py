"""TLS (RFC 8446 / 5246) handshake hints: ClientHello SNI and versions,
ServerHello selected version (supported_versions extension when present)."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

HANDSHAKE = 22
CLIENT_HELLO, SERVER_HELLO = 1, 2
EXT_SNI, EXT_SUPPORTED_VERSIONS = 0, 43
MAX_EXT = 40
MAX_VERSIONS = 8


def dissect(pk: Packets, rows: np.ndarray) -> None:
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 11 <= end
    rows, off, end = rows[ok], off[ok], end[ok]
    w0 = pk.u32(off)  # content type, record version, length high byte
    hs = pk.u8(off + 5)
    ok = ((w0 >> 24) == HANDSHAKE) & (((w0 >> 16) & 0xFF) == 3) & ((hs == CLIENT_HELLO) | (hs == SERVER_HELLO))
    rows, off, end, hs = rows[ok], off[ok], end[ok], hs[ok]
    pk.put("app_proto", rows, AppProto.TLS)
    pk.put("tls_handshake_type", rows, hs)
    version = pk.u16(off + 9).astype(np.int64)
    client = hs == CLIENT_HELLO
    p = off + 43
    p = p + 1 + pk.u8(p)  # session id
    p = np.where(client, p + 2 + pk.u16(p), p + 2)  # cipher suites / chosen suite
    p = np.where(client, p + 1 + pk.u8(p), p + 1)  # compression methods / chosen method
    ext_end = np.minimum(p + 2 + pk.u16(p), end)
    p = p + 2
    best = np.zeros(len(rows), dtype=np.int64)
    active = np.flatnonzero(p + 4 <= ext_end)
    for _ in range(MAX_EXT):
        if not len(active):
            break
        q = p[active]
        etype = pk.u16(q)
        elen = pk.u16(q + 2).astype(np.int64)
        sni = active[(etype == EXT_SNI) & client[active] & (q + 9 <= ext_end[active])]
        if len(sni):
            qs = p[sni]
            nlen = pk.u16(qs + 7).astype(np.int64)
            fits = qs + 9 + nlen <= end[sni]
            pk.put_str("tls_sni", rows[sni[fits]], qs[fits] + 9, nlen[fits])
        sv = active[etype == EXT_SUPPORTED_VERSIONS]
        if len(sv):
            _supported_versions(pk, sv, p[sv], client[sv], best)
        p[active] = q + 4 + elen
        active = active[p[active] + 4 <= ext_end[active]]
    version = np.where(best > 0, best, version)
    pk.put("tls_version", rows, version.astype(np.uint16))


def _supported_versions(pk: Packets, idx: np.ndarray, q: np.ndarray, client: np.ndarray, best: np.ndarray) -> None:
    server = ~client
    best[idx[server]] = pk.u16(q[server] + 4)
    c, qc = idx[client], q[client]
    list_len = pk.u8(qc + 4).astype(np.int64)
    for j in range(MAX_VERSIONS):
        has = 2 * j + 2 <= list_len
        v = pk.u16(qc + 5 + 2 * j).astype(np.int64)
        grease = (v & 0x0F0F) == 0x0A0A
        take = has & ~grease & (v > best[c])
        best[c[take]] = v[take]
