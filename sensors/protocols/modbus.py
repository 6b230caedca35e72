"""Modbus/TCP (Modbus Messaging on TCP/IP v1.0b): MBAP header and function code, port 502."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 502


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off = rows[ok], off[ok]
    ok = (pk.u16(off + 2) == 0) & (pk.u16(off + 4) >= 2)  # protocol id 0, length covers unit + function
    rows, off = rows[ok], off[ok]
    pk.put("app_proto", rows, AppProto.MODBUS)
    pk.put("modbus_func", rows, pk.u8(off + 7))
