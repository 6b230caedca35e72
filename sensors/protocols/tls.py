"""TLS (RFC 8446 / 5246) handshake hints: ClientHello SNI, versions and the JA3 / JA4
client fingerprints, ServerHello selected version (supported_versions extension when present).

The fingerprints' lists (ciphers, extensions, groups, point formats, signature
algorithms) are read for every ClientHello at once and joined in Arrow; only
the final hashing is per ClientHello (one per TLS connection).  A ClientHello
that does not fit in its packet (split over TCP segments) gets none: a
fingerprint of part of the lists would match nothing.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

HANDSHAKE = 22
CLIENT_HELLO, SERVER_HELLO = 1, 2
EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN, EXT_SUPPORTED_VERSIONS = 0, 10, 11, 13, 16, 43
MAX_EXT = 40
MAX_VERSIONS = 8
MAX_LIST_ITEMS = 128  # ciphers, groups, signature algorithms read at most
#: JA4's two-character TLS version
JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
                0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}
_HEX1 = np.array(list("0123456789abcdef"))
_CHARS = np.array([chr(i) for i in range(256)])


@functools.cache
def _hex4_strings() -> pa.Array:
    """``"0000"`` to ``"ffff"``, built from bytes (65,536 Python strings cost every start ~30 ms), when the first
    fingerprint needs them (~3 ms: a flow meter's decoding computes none)."""
    i = np.arange(1 << 16)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)[np.stack([i >> 12, (i >> 8) & 15, (i >> 4) & 15, i & 15],
                                                                   axis=1)]
    offsets = np.arange(0, 4 * (1 << 16) + 1, 4, dtype=np.int32)
    return pa.StringArray.from_buffers(1 << 16, pa.py_buffer(offsets), pa.py_buffer(digits.tobytes()))



def dissect(pk: Packets, rows: np.ndarray) -> None:
    """ClientHello/ServerHello: version, SNI and (when wanted) JA3/JA4 of the ClientHellos."""
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
    ciphers_at = p
    p = np.where(client, p + 2 + pk.u16(p), p + 2)  # cipher suites / chosen suite
    p = np.where(client, p + 1 + pk.u8(p), p + 1)  # compression methods / chosen method
    ext_end = np.minimum(p + 2 + pk.u16(p), end)
    p = p + 2
    best = np.zeros(len(rows), dtype=np.int64)
    exts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (hello, ordinal, type) of client extensions
    at: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # extension type -> (hello, offset of its header)
    active = np.flatnonzero(p + 4 <= ext_end)
    for ordinal in range(MAX_EXT):
        if not len(active):
            break
        q = p[active]
        etype = pk.u16(q)
        elen = pk.u16(q + 2).astype(np.int64)
        mine = client[active]
        exts.append((active[mine], np.full(int(mine.sum()), ordinal), etype[mine].astype(np.int64)))
        for wanted in (EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN):
            hit = mine & (etype == wanted)
            if hit.any():
                prev = at.get(wanted)
                at[wanted] = (active[hit], q[hit]) if prev is None else \
                    (np.concatenate([prev[0], active[hit]]), np.concatenate([prev[1], q[hit]]))
        sni = active[(etype == EXT_SNI) & mine & (q + 9 <= ext_end[active])]
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
    version_used = np.where(best > 0, best, version)
    pk.put("tls_version", rows, version_used.astype(np.uint16))
    # fingerprints of the ClientHellos that fit in their packet
    whole = client & (off + 9 + ((pk.u32(off + 5) & 0xFFFFFF).astype(np.int64)) <= end)
    if (pk.wants("tls_ja3") or pk.wants("tls_ja4")) and whole.any():
        _fingerprints(pk, rows, whole, version, version_used, ciphers_at, end, exts, at)


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


def _grease(values: np.ndarray) -> np.ndarray:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa), left out of every fingerprint."""
    return ((values & 0x0F0F) == 0x0A0A) & ((values >> 8) == (values & 0xFF))


def _items(pk: Packets, hello: np.ndarray, start: np.ndarray, nbytes: np.ndarray, end: np.ndarray,
           size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``size``-byte items of lists at ``start`` (``nbytes`` long, cut at ``end``) -> (hello, ordinal, value)."""
    count = np.clip(np.minimum(nbytes, end - start) // size, 0, MAX_LIST_ITEMS).astype(np.int64)
    owner = np.repeat(hello, count)
    ordinal = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    where = np.repeat(start, count) + size * ordinal
    values = (pk.u16(where) if size == 2 else pk.u8(where)).astype(np.int64)
    return owner, ordinal, values


def _joined(n: int, owner: np.ndarray, order_key: np.ndarray, text: pa.Array, sep: str) -> pa.Array:
    """Per hello (0..n-1), its items' ``text`` in ``order_key`` order joined by ``sep`` ('' when none)."""
    order = np.lexsort((order_key, owner))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n))]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), text.take(pa.array(order)) if len(order) else text)
    return pc.binary_join(lists, sep)


def _fingerprints(pk: Packets, rows: np.ndarray, whole: np.ndarray, legacy_version: np.ndarray,
                  version: np.ndarray, ciphers_at: np.ndarray, end: np.ndarray,
                  exts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  at: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """JA3 (Salesforce: MD5 of version, ciphers, extensions, groups, point formats in wire order)
    and JA4 (FoxIO: ``t13d1516h2_<sorted ciphers>_<sorted extensions>_<signature algorithms>``)."""
    index = np.cumsum(whole) - 1  # hello -> its position among the whole ClientHellos
    n = int(whole.sum())

    def keep(hello: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
        ok = whole[hello]
        return [index[hello[ok]], *(a[ok] for a in arrays)]

    hellos = np.flatnonzero(whole)
    c_own, c_ord, c_val = _items(pk, hellos, ciphers_at[hellos] + 2, pk.u16(ciphers_at[hellos]).astype(np.int64),
                                 end[hellos], 2)
    c_own = index[c_own]
    ok = ~_grease(c_val)
    c_own, c_ord, c_val = c_own[ok], c_ord[ok], c_val[ok]
    e_hello, e_ord, e_val = (np.concatenate(x) for x in zip(*exts)) if exts else (np.zeros(0, np.int64),) * 3
    e_own, e_ord, e_val = keep(e_hello, e_ord, e_val)
    ok = ~_grease(e_val)
    e_own, e_ord, e_val = e_own[ok], e_ord[ok], e_val[ok]

    def ext_items(ext: int, size: int, header: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items of one extension's list (its length field is ``header`` bytes after the extension header)."""
        if ext not in at:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        hello, q = keep(*at[ext])
        nbytes = (pk.u16(q + 4) if header == 2 else pk.u8(q + 4)).astype(np.int64)
        own, ordinal, values = _items(pk, hello, q + 4 + header, nbytes, end[hellos][hello], size)
        ok = ~_grease(values) if size == 2 else np.ones(len(values), dtype=bool)
        return own[ok], ordinal[ok], values[ok]

    g_own, g_ord, g_val = ext_items(EXT_GROUPS, 2, 2)
    f_own, f_ord, f_val = ext_items(EXT_POINT_FORMATS, 1, 1)
    s_own, s_ord, s_val = ext_items(EXT_SIG_ALGS, 2, 2)

    def decimal(values: np.ndarray) -> pa.Array:
        return pa.array(values).cast(pa.string())

    ja3_text = pc.binary_join_element_wise(
        decimal(legacy_version[hellos]), _joined(n, c_own, c_ord, decimal(c_val), "-"),
        _joined(n, e_own, e_ord, decimal(e_val), "-"), _joined(n, g_own, g_ord, decimal(g_val), "-"),
        _joined(n, f_own, f_ord, decimal(f_val), "-"), ",")
    ja3 = [hashlib.md5(s.encode(), usedforsecurity=False).hexdigest() for s in ja3_text.to_pylist()]

    # JA4 part a: protocol, version, SNI or not, counts, ALPN's first and last characters
    n_ciphers = np.bincount(c_own, minlength=n)
    n_exts = np.bincount(e_own, minlength=n)
    has_sni = np.zeros(n, dtype=bool)
    has_sni[e_own[e_val == EXT_SNI]] = True
    seen, where = np.unique(version[hellos], return_inverse=True)  # a handful of versions
    ver = np.array([JA4_VERSIONS.get(int(v), "00") for v in seen])[where]
    alpn = np.full(n, "00", dtype="<U2")
    if EXT_ALPN in at:
        hello, q = keep(*at[EXT_ALPN])
        length = pk.u8(q + 6).astype(np.int64)
        has = (pk.u16(q + 4) >= 2) & (length > 0) & (q + 7 + length <= end[hellos][hello])
        hello, q, length = hello[has], q[has], length[has]
        first, last = pk.u8(q + 7).astype(np.int64), pk.u8(q + 6 + length).astype(np.int64)
        alnum = np.char.isalnum(_CHARS[first]) & np.char.isalnum(_CHARS[last]) & (first < 128) & (last < 128)
        alpn[hello] = np.where(alnum, np.char.add(_CHARS[first], _CHARS[last]),
                               np.char.add(_HEX1[first >> 4], _HEX1[last & 0xF]))
    part_a = np.char.add(np.char.add(np.char.add("t", ver), np.where(has_sni, "d", "i")),
                         np.char.add(np.char.add(np.char.zfill(np.minimum(n_ciphers, 99).astype(str), 2),
                                                 np.char.zfill(np.minimum(n_exts, 99).astype(str), 2)), alpn))
    ciphers_sorted = _joined(n, c_own, c_val, _hex4_strings().take(pa.array(c_val)), ",")
    counted = (e_val != EXT_SNI) & (e_val != EXT_ALPN)
    exts_sorted = _joined(n, e_own[counted], e_val[counted], _hex4_strings().take(pa.array(e_val[counted])), ",")
    sig_algs = _joined(n, s_own, s_ord, _hex4_strings().take(pa.array(s_val)), ",")
    ja4 = []
    for a, b, c, s in zip(part_a.tolist(), ciphers_sorted.to_pylist(), exts_sorted.to_pylist(), sig_algs.to_pylist()):
        c = f"{c}_{s}" if s else c
        ja4.append(f"{a}_{_sha12(b)}_{_sha12(c)}")
    pk.put_arrow_str("tls_ja3", rows[hellos], pa.array(ja3, pa.string()))
    pk.put_arrow_str("tls_ja4", rows[hellos], pa.array(ja4, pa.string()))


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"
