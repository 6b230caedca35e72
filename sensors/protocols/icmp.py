"""ICMP (RFC 792) and ICMPv6 (RFC 4443): type and code."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import DecodeStatus


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray, ip_end: np.ndarray) -> None:
    ok = pk.fits(rows, off, 4)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off, ip_end = rows[ok], off[ok], ip_end[ok]
    tc = pk.u16(off)
    pk.put("icmp_type", rows, (tc >> 8).astype(np.uint8))
    pk.put("icmp_code", rows, (tc & 0xFF).astype(np.uint8))
    plen = np.maximum(ip_end - off - 8, 0)
    pk.put("payload_len", rows, plen.astype(np.uint32))
    pk.pl_off[rows] = off + 8
    pk.pl_end[rows] = np.minimum(off + 8 + plen, pk.end[rows])
