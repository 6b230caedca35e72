"""GTP-C headers on UDP 2123: GTPv2-C (3GPP TS 29.274 5.1) and GTPv1-C
(TS 29.060 6): version, message type, TEID, sequence number."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORT = 2123


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 8 <= end
    rows, off = rows[ok], off[ok]
    w0 = pk.u32(off)
    flags = w0 >> 24
    version = flags >> 5
    length = (w0 & 0xFFFF).astype(np.int64)
    udp_len = pk.get("payload_len", rows).astype(np.int64)
    v2 = (version == 2) & (4 + length <= udp_len)
    v1 = (version == 1) & ((flags & 0x10) != 0) & (8 + length <= udp_len)
    rows, off, w0, flags, v2 = rows[v1 | v2], off[v1 | v2], w0[v1 | v2], flags[v1 | v2], v2[v1 | v2]
    pk.put("app_proto", rows, AppProto.GTPC)
    pk.put("gtpc_version", rows, np.where(v2, 2, 1).astype(np.uint8))
    pk.put("gtpc_msg_type", rows, ((w0 >> 16) & 0xFF).astype(np.uint8))
    t_flag = v2 & ((flags & 0x08) != 0)
    has_teid = ~v2 | t_flag
    pk.put("gtpc_teid", rows[has_teid], pk.u32(off[has_teid] + 4))
    # v2: 3-byte sequence after the TEID (or right after the length); v1: 2 bytes if S flag
    seq_v2 = pk.u32(np.where(t_flag, off + 8, off + 4)) >> 8
    v1_seq = ~v2 & ((flags & 0x02) != 0)
    seq = np.where(v2, seq_v2, pk.u16(off + 8).astype(np.uint32))
    keep = v2 | v1_seq
    pk.put("gtpc_seq", rows[keep], seq[keep])
