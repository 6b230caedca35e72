"""IPv4 (RFC 791): header length with options, total length, fragments."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import V4_MAPPED_LO, Packets, kept
from sensors.schema import DecodeStatus

#: (rows, l4_off, ip_end, proto): ip_end is where the IP packet says it ends
L4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def dissect(pk: Packets, rows: np.ndarray, off: np.ndarray) -> L4:
    ok = pk.fits(rows, off, 20)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = kept(ok, rows, off)
    # version/IHL, TOS, total length | id, flags, fragment offset | TTL, protocol, checksum | source | destination
    w = pk.words(off, 5)
    w0 = w[0]
    version = w0 >> 28
    ihl = ((w0 >> 24) & 0x0F).astype(np.int64) * 4
    total = (w0 & 0xFFFF).astype(np.int64)
    ok = version == 4
    pk.fail(rows[~ok], DecodeStatus.BAD_IP_VERSION)
    good_len = ihl >= 20
    pk.fail(rows[ok & ~good_len], DecodeStatus.BAD_HEADER_LENGTH)
    ok &= good_len
    fits = pk.fits(rows, off, ihl)
    pk.fail(rows[ok & ~fits], DecodeStatus.TRUNCATED)
    ok &= fits
    rows, off, ihl, total, w = kept(ok, rows, off, ihl, total, w)
    # total length 0 is seen with TCP segmentation offload: trust the capture
    total = np.where(total == 0, pk.end[rows] - off, total)
    bad_total = total < ihl
    pk.fail(rows[bad_total], DecodeStatus.BAD_TOTAL_LENGTH)
    total = np.maximum(total, ihl)
    w1, w2 = w[1], w[2]
    frag_off = ((w1 & 0x1FFF) * 8).astype(np.uint16)
    more = (w1 & 0x2000) != 0
    proto = ((w2 >> 16) & 0xFF).astype(np.int64)
    pk.put("ip_version", rows, 4)
    pk.put_ip("src_ip", rows, 0, V4_MAPPED_LO | w[3].astype(np.uint64))
    pk.put_ip("dst_ip", rows, 0, V4_MAPPED_LO | w[4].astype(np.uint64))
    pk.put("ip_proto", rows, proto.astype(np.uint8))
    pk.put("ip_ttl", rows, (w2 >> 24).astype(np.uint8))
    pk.put("ip_hdr_len", rows, ihl.astype(np.uint16))
    pk.put("ip_len", rows, total.astype(np.uint16))
    pk.put("ip_id", rows, w1 >> 16)
    pk.put("ip_is_fragment", rows, more | (frag_off > 0))
    pk.put("ip_frag_offset", rows, frag_off)
    first = frag_off == 0  # later fragments carry no transport header
    rows, l4_off, ip_end, proto = kept(first, rows, off + ihl, off + total, proto)
    return rows, l4_off, ip_end, proto
