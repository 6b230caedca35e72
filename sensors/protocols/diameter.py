"""Diameter header (RFC 6733 3): command code, application id, R flag.

TCP/SCTP port 3868, or SCTP DATA with PPID 46/47 on any port.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto

PORT = 3868


def dissect(pk: Packets, rows: np.ndarray) -> None:
    on_port = (pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)
    by_ppid = pk.has("sctp_ppid", rows) & one_of(pk.get("sctp_ppid", rows), (46, 47))
    rows = rows[on_port | by_ppid]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 20 <= end
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    w1 = pk.u32(off + 4)
    ok = ((w0 >> 24) == 1) & ((w0 & 0xFFFFFF) >= 20) & ((w0 & 0x3) == 0)
    rows, off, w1 = rows[ok], off[ok], w1[ok]
    pk.put("app_proto", rows, AppProto.DIAMETER)
    pk.put("diameter_cmd", rows, w1 & 0xFFFFFF)
    pk.put("diameter_is_request", rows, (w1 >> 31) == 1)
    pk.put("diameter_app_id", rows, pk.u32(off + 8))
