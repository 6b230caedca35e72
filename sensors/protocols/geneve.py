"""Geneve (RFC 8926) on UDP 6081: options skipped, inner Ethernet or IP."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import DecodeStatus

PORT = 6081
ETH_TEB, ETH_IPV4, ETH_IPV6 = 0x6558, 0x0800, 0x86DD

Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def candidates(pk: Packets, rows: np.ndarray) -> np.ndarray:
    return rows[pk.get("dst_port", rows) == PORT]


def dissect(pk: Packets, rows: np.ndarray) -> Inner:
    off = pk.pl_off[rows]
    ok = pk.fits(rows, off, 8)
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    ok = (w0 >> 30) == 0  # version 0
    rows, off, w0 = rows[ok], off[ok], w0[ok]
    opt_len = ((w0 >> 24) & 0x3F).astype(np.int64) * 4
    etype = (w0 & 0xFFFF).astype(np.int64)
    pk.put("vni", rows, pk.u32(off + 4) >> 8)
    known = one_of(etype, (ETH_TEB, ETH_IPV4, ETH_IPV6))
    pk.fail(rows[~known], DecodeStatus.UNKNOWN_ENCAPSULATION)
    return rows[known], (off + 8 + opt_len)[known], etype[known]
