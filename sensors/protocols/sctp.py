"""SCTP (RFC 9260): common header and the chunk list.

The first DATA chunk's payload protocol identifier tells the upper protocol
(NGAP 60, S1AP 18, Diameter 46/47, M3UA 3); its user data is the payload seen
by the application dissectors.  A packet that bundles further DATA chunks
keeps them, headers included, in ``cp_more`` (control-plane packets only): the
message dissectors walk them (:func:`data_chunks`), at control-plane volumes.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto, DecodeStatus

DATA = 0
MAX_CHUNKS = 16
PPID_APP = {60: AppProto.NGAP, 18: AppProto.S1AP, 46: AppProto.DIAMETER, 47: AppProto.DIAMETER}


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray, ip_end: np.ndarray) -> None:
    ok = pk.fits(rows, off, 12)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off, ip_end = rows[ok], off[ok], ip_end[ok]
    ports = pk.u32(off)
    pk.put("src_port", rows, (ports >> 16).astype(np.uint16))
    pk.put("dst_port", rows, (ports & 0xFFFF).astype(np.uint16))
    pk.put("payload_len", rows, np.maximum(ip_end - off - 12, 0).astype(np.uint32))
    end = np.minimum(ip_end, pk.end[rows])
    types = np.zeros(len(rows), dtype=np.uint32)
    ppid = np.zeros(len(rows), dtype=np.uint32)
    data_off = np.full(len(rows), -1, dtype=np.int64)
    data_end = np.full(len(rows), -1, dtype=np.int64)
    more_off = np.full(len(rows), -1, dtype=np.int64)  # the second DATA chunk, if any
    cur = off + 12
    active = np.flatnonzero(cur + 4 <= end)
    for _ in range(MAX_CHUNKS):
        if not len(active):
            break
        c = cur[active]
        word = pk.u32(c)
        ctype = (word >> 24).astype(np.int64)
        clen = (word & 0xFFFF).astype(np.int64)
        bad = clen < 4
        pk.fail(rows[active[bad]], DecodeStatus.BAD_HEADER_LENGTH)
        small = ctype < 32
        types[active[small]] |= (np.uint32(1) << ctype[small].astype(np.uint32))
        second = (ctype == DATA) & (clen >= 16) & (data_off[active] >= 0) & (more_off[active] < 0)
        more_off[active[second]] = c[second]  # the second DATA chunk: the dissectors walk on from it
        first_data = (ctype == DATA) & (clen >= 16) & (data_off[active] < 0)
        d = active[first_data]
        ppid[d] = pk.u32(c[first_data] + 12)
        data_off[d] = c[first_data] + 16
        data_end[d] = np.minimum(c[first_data] + clen[first_data], end[d])
        cur[active] = c + ((clen + 3) & ~3)
        active = active[~bad & (cur[active] + 4 <= end[active])]
    pk.put("sctp_chunk_types", rows, types)
    has = data_off >= 0
    pk.put("sctp_ppid", rows[has], ppid[has])
    pk.pl_off[rows[has]] = data_off[has]
    pk.pl_end[rows[has]] = data_end[has]
    more = more_off >= 0
    pk.more_off[rows[more]] = more_off[more]
    pk.more_end[rows[more]] = end[more]
    for code, app in PPID_APP.items():
        m = has & (ppid == code)
        if m.any():
            pk.put("app_proto", rows[m], app)


def data_chunks(more: bytes, ppids: tuple[int, ...]) -> list[bytes]:
    """The user data of the DATA chunks in ``more`` (``cp_more``) whose payload protocol is one of ``ppids``;
    a chunk cut short ends the walk."""
    out, pos = [], 0
    while pos + 16 <= len(more):
        ctype, length = more[pos], int.from_bytes(more[pos + 2:pos + 4], "big")
        if length < 4:
            break
        if ctype == DATA and length >= 16 and int.from_bytes(more[pos + 12:pos + 16], "big") in ppids:
            out.append(more[pos + 16:pos + min(length, len(more) - pos)])
        pos += (length + 3) & ~3
    return out
