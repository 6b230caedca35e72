"""VXLAN (RFC 7348) on UDP 4789: 24-bit VNI, inner Ethernet frame."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets

PORT = 4789
ETH_TEB = 0x6558

Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def candidates(pk: Packets, rows: np.ndarray) -> np.ndarray:
    return rows[pk.get("dst_port", rows) == PORT]


def dissect(pk: Packets, rows: np.ndarray) -> Inner:
    off = pk.pl_off[rows]
    ok = pk.fits(rows, off, 8) & ((pk.u8(off) & 0x08) != 0)  # I flag: VNI valid
    rows, off = rows[ok], off[ok]
    pk.put("vni", rows, pk.u32(off + 4) >> 8)
    return rows, off + 8, np.full(len(rows), ETH_TEB, dtype=np.int64)
