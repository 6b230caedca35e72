"""SCTP (RFC 9260): common header and the chunk list.

The first DATA chunk's payload protocol identifier tells the upper protocol
(NGAP 60, S1AP 18, Diameter 46/47, M3UA 3); its user data is the payload seen
by the application dissectors.
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
    for code, app in PPID_APP.items():
        m = has & (ppid == code)
        if m.any():
            pk.put("app_proto", rows[m], app)
