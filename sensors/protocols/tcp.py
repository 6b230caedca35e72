"""TCP (RFC 9293): ports, sequence numbers, flags, window, header length."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, kept
from sensors.schema import DecodeStatus

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray, ip_end: np.ndarray) -> None:
    ok = pk.fits(rows, off, 20)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off, ip_end = kept(ok, rows, off, ip_end)
    ports, seq, ack, w3 = pk.words(off, 4)  # ports | sequence | acknowledgement | data offset, flags, window
    hlen = ((w3 >> 28) * 4).astype(np.int64)
    pk.put("src_port", rows, (ports >> 16).astype(np.uint16))
    pk.put("dst_port", rows, (ports & 0xFFFF).astype(np.uint16))
    pk.put("tcp_seq", rows, seq)
    pk.put("tcp_ack", rows, ack)
    pk.put("tcp_flags", rows, ((w3 >> 16) & 0x1FF).astype(np.uint16))
    pk.put("tcp_window", rows, (w3 & 0xFFFF).astype(np.uint16))
    pk.put("tcp_hdr_len", rows, hlen.astype(np.uint8))
    good = hlen >= 20
    pk.fail(rows[~good], DecodeStatus.BAD_HEADER_LENGTH)
    fits = pk.fits(rows, off, hlen)
    pk.fail(rows[good & ~fits], DecodeStatus.TRUNCATED)
    ok = good & fits
    rows, start, ip_end = kept(ok, rows, off + hlen, ip_end)
    plen = np.maximum(ip_end - start, 0)
    pk.put("payload_len", rows, plen.astype(np.uint32))
    pk.pl_off[rows] = start
    pk.pl_end[rows] = np.minimum(start + plen, pk.end[rows])
