"""PFCP header (3GPP TS 29.244 7.2.2): version, message type, SEID, sequence.

UDP port 8805 in either direction.  IEs are decoded in the control-plane path.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 8805


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off, end = rows[ok], off[ok], end[ok]
    w0 = pk.u32(off)
    flags = w0 >> 24
    length = (w0 & 0xFFFF).astype(np.int64)
    s_flag = (flags & 0x01) != 0
    ok = ((flags >> 5) == 1) & (length >= 4) & (4 + length <= pk.get("payload_len", rows).astype(np.int64) + 0)
    ok &= ~s_flag | (off + 16 <= end)
    rows, off, w0, s_flag = rows[ok], off[ok], w0[ok], s_flag[ok]
    pk.put("app_proto", rows, AppProto.PFCP)
    pk.put("pfcp_msg_type", rows, ((w0 >> 16) & 0xFF).astype(np.uint8))
    s = np.flatnonzero(s_flag)
    pk.put("pfcp_seid", rows[s], pk.u64(off[s] + 4))
    seq_at = np.where(s_flag, off + 12, off + 4)
    pk.put("pfcp_seq", rows, pk.u32(seq_at) >> 8)
