"""GRE (RFC 2784/2890) with checksum/key/sequence fields, carrying IP,
transparent Ethernet (0x6558) or ERSPAN type I/II/III mirrored frames."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import DecodeStatus

IP_PROTO = 47
ETH_TEB = 0x6558
ERSPAN_2 = 0x88BE
ERSPAN_3 = 0x22EB
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD

Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def dissect(pk: Packets, rows: np.ndarray) -> Inner:
    """``rows`` are IP packets with protocol 47; their payload starts at pl_off."""
    off = pk.pl_off[rows]
    ok = pk.fits(rows, off, 4)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    flags = w0 >> 16
    proto = (w0 & 0xFFFF).astype(np.int64)
    version_ok = (flags & 0x7) == 0
    pk.fail(rows[~version_ok], DecodeStatus.UNKNOWN_ENCAPSULATION)  # e.g. PPTP's enhanced GRE
    rows, off, flags, proto = rows[version_ok], off[version_ok], flags[version_ok], proto[version_ok]
    c, k, s = (flags & 0x8000) != 0, (flags & 0x2000) != 0, (flags & 0x1000) != 0
    hlen = 4 + 4 * (c.astype(np.int64) + k + s)
    kr = np.flatnonzero(k)
    pk.put("vni", rows[kr], pk.u32(off[kr] + 4 + 4 * c[kr]))
    inner = off + hlen
    etype = proto.copy()
    # ERSPAN type II has an 8-byte header when the sequence bit is set (type I has none)
    e2 = proto == ERSPAN_2
    inner = np.where(e2 & s, inner + 8, inner)
    e3 = proto == ERSPAN_3
    if e3.any():  # 12-byte header, +8 with the optional platform sub-header (O bit)
        obit = (pk.u8(inner + 11) & 0x01).astype(np.int64)
        inner = np.where(e3, inner + 12 + 8 * obit, inner)
    etype = np.where(e2 | e3, ETH_TEB, etype)
    known = one_of(etype, (ETH_IPV4, ETH_IPV6, ETH_TEB))
    pk.fail(rows[~known], DecodeStatus.UNKNOWN_ENCAPSULATION)
    return rows[known], inner[known], etype[known]


def is_erspan(pk: Packets, rows: np.ndarray) -> np.ndarray:
    proto = pk.u16(pk.pl_off[rows] + 2)
    return (proto == ERSPAN_2) | (proto == ERSPAN_3)
