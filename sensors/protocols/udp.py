"""UDP (RFC 768)."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, kept
from sensors.schema import DecodeStatus


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray, ip_end: np.ndarray) -> None:
    ok = pk.fits(rows, off, 8)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off, ip_end = kept(ok, rows, off, ip_end)
    w0, w1 = pk.words(off, 2)  # ports | length, checksum
    length = (w1 >> 16).astype(np.int64)
    pk.put("src_port", rows, (w0 >> 16).astype(np.uint16))
    pk.put("dst_port", rows, (w0 & 0xFFFF).astype(np.uint16))
    bad = (length < 8) & (length != 0)  # 0 is legal for IPv6 jumbograms
    pk.fail(rows[bad], DecodeStatus.BAD_TOTAL_LENGTH)
    # a first fragment holds only part of the datagram: keep the declared length
    frag = pk.get("ip_is_fragment", rows)
    end = np.where(length >= 8, np.where(frag, off + length, np.minimum(off + length, ip_end)), ip_end)
    plen = np.maximum(end - off - 8, 0)
    pk.put("payload_len", rows, plen.astype(np.uint32))
    pk.pl_off[rows] = off + 8
    pk.pl_end[rows] = np.minimum(off + 8 + plen, pk.end[rows])
