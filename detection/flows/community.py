"""Community ID v1 (seed 0) of flows: pre-images built with numpy, one SHA-1 per flow."""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np
import pyarrow as pa

# Community ID v1: ICMP types that have a reverse (request <-> reply)
ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 144: 145, 145: 144}
PORT_PROTOS = (6, 17, 132)
CID_CHARS = len("1:") + 28


def community_id_chars(src: np.ndarray, dst: np.ndarray, is_v4: np.ndarray, proto: np.ndarray, sport: np.ndarray,
                       dport: np.ndarray, icmp_type: np.ndarray, icmp_code: np.ndarray) -> np.ndarray:
    """Community IDs of many flows (addresses as (n, 2) 64-bit halves) as an (n, CID_CHARS) matrix of their
    characters: every id is "1:" and 28 base64 characters."""
    n = len(proto)
    sport, dport = sport.copy(), dport.copy()
    one_way = np.zeros(n, dtype=bool)
    for code, pairs in ((1, ICMP4_PAIRS), (58, ICMP6_PAIRS)):
        m = proto == code
        if m.any():
            paired = m & np.isin(icmp_type, list(pairs))
            mapped = np.array([pairs.get(int(t), 0) for t in icmp_type[paired]], dtype=np.int64)
            sport[m], dport[m] = icmp_type[m], icmp_code[m]
            dport[paired] = mapped
            one_way |= m & ~paired
    # order endpoints: (src, sport) < (dst, dport), unless one-way ICMP
    lt = (src[:, 0] < dst[:, 0]) | ((src[:, 0] == dst[:, 0]) & ((src[:, 1] < dst[:, 1]) | (
        (src[:, 1] == dst[:, 1]) & (sport < dport))))
    swap = ~(one_way | lt)
    a = np.where(swap[:, None], dst, src).astype(">u8").view(np.uint8).reshape(n, 16)
    b = np.where(swap[:, None], src, dst).astype(">u8").view(np.uint8).reshape(n, 16)
    pa_, pb = np.where(swap, dport, sport), np.where(swap, sport, dport)
    tail = np.zeros((n, 6), dtype=np.uint8)
    tail[:, 0] = proto
    tail[:, 2:4] = pa_.astype(">u2").view(np.uint8).reshape(n, 2)
    tail[:, 4:6] = pb.astype(">u2").view(np.uint8).reshape(n, 2)
    has_ports = np.isin(proto, (*PORT_PROTOS, 1, 58))
    # every id is "1:" and 28 base64 characters: the text is one fixed-width matrix, then one Arrow array
    text = np.empty((n, CID_CHARS), dtype=np.uint8)
    text[:, :2] = np.frombuffer(b"1:", dtype=np.uint8)
    for v4 in (True, False):
        for ports in (True, False):
            idx = np.flatnonzero((is_v4 == v4) & (has_ports == ports))
            if not len(idx):
                continue
            addr = slice(12, 16) if v4 else slice(0, 16)
            rows = np.concatenate([np.zeros((len(idx), 2), np.uint8), a[idx][:, addr], b[idx][:, addr],
                                   tail[idx][:, : 6 if ports else 2]], axis=1)
            data, width = memoryview(rows.tobytes()), rows.shape[1]
            # SHA-1 per flow; base64 for all at once: a 20-byte digest plus one zero byte encodes to
            # the digest's 27 base64 characters followed by one more, which becomes the '=' padding
            digests = b"".join([hashlib.sha1(data[j * width : (j + 1) * width]).digest() + b"\x00"
                                for j in range(len(idx))])
            text[idx, 2:] = np.frombuffer(base64.b64encode(digests), dtype=np.uint8).reshape(len(idx), 28)
    text[:, CID_CHARS - 1] = ord("=")
    return text


def community_id_text(chars: np.ndarray) -> pa.StringArray:
    """The ids of a :func:`community_id_chars` matrix, as one Arrow string array (no copy of the characters)."""
    offsets = np.arange(len(chars) + 1, dtype=np.int32) * CID_CHARS
    return pa.StringArray.from_buffers(len(chars), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def community_id(src: bytes, dst: bytes, proto: int, sport: int, dport: int, icmp_type: int, icmp_code: int) -> str:
    """Community ID v1 of one flow (addresses as 4 or 16 bytes); reference for :func:`community_id_chars`."""
    v4 = len(src) == 4

    def halves(b: bytes) -> list[int]:
        full = b"\x00" * 10 + b"\xff\xff" + b if v4 else b
        return list(struct.unpack("!QQ", full))

    chars = community_id_chars(np.array([halves(src)], dtype=np.uint64), np.array([halves(dst)], dtype=np.uint64),
                               np.array([v4]), np.array([proto]), np.array([sport]), np.array([dport]),
                               np.array([icmp_type]), np.array([icmp_code]))
    return bytes(chars[0]).decode()
