"""Classic libpcap files (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html).

Microsecond (0xa1b2c3d4) and nanosecond (0xa1b23c4d) magics, both byte orders.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from sensors.capture.walk import Windows, u_view, words_at

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
#: libpcap refuses records larger than this; anything bigger is damage
MAX_RECORD = 262144 * 4
#: a resynchronisation candidate's seconds must lie this close to a known record's (~97 days)
TS_SLACK = 1 << 23

MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


def global_header(link_type: int = 1, snaplen: int = 262144, nanoseconds: bool = False) -> bytes:
    """A little-endian file header (version 2.4) for files this project writes."""
    return struct.pack("<IHHiIII", 0xA1B23C4D if nanoseconds else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link_type)


@dataclass
class PcapHeader:
    endian: str  # '<' or '>'
    ns_per_unit: int  # 1000 for microsecond files, 1 for nanosecond files
    snaplen: int
    link_type: int


def parse_global_header(head: bytes) -> PcapHeader | None:
    """The file header, or None if ``head`` is not a pcap file."""
    if len(head) < GLOBAL_HEADER_LEN or head[:4] not in MAGICS:
        return None
    endian, unit = MAGICS[head[:4]]
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", head[4:24])
    # the upper 16 bits of `network` may carry FCS information (draft section 4)
    return PcapHeader(endian, unit, snaplen, network & 0xFFFF)


class PcapRecords:
    """The chain format of pcap records, for :func:`sensors.capture.walk.chain_walk`."""

    header_len = RECORD_HEADER_LEN
    alignment = 1

    def __init__(self, header: PcapHeader, ts_hint: int | None = None) -> None:
        self.header = header
        self.u32 = header.endian + "u4"
        self.frac_limit = 1_000_000 if header.ns_per_unit == 1000 else 1_000_000_000
        self.ts_hint = ts_hint  # seconds of a known record, sharpens resynchronisation

    def header_ok(self, buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fraction_caplen = words_at(buf, pos + 4, 2, self.u32)
        caplen = fraction_caplen[:, 1].astype(np.int64)
        return (caplen <= MAX_RECORD) & (fraction_caplen[:, 0] < self.frac_limit), pos + RECORD_HEADER_LEN + caplen

    def step(self, buf: np.ndarray, pos: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
        ok, nxt = self.header_ok(buf, pos)
        return ok & (nxt <= end), nxt

    def candidates(self, window: Windows) -> np.ndarray:
        # one byte per position: the top byte of the seconds changes every ~194 days
        if self.ts_hint is None:
            return np.ones((window.count, window.width), dtype=bool)
        top = window.at(window.buf, 3 if self.header.endian == "<" else 0)
        lo, hi = ((self.ts_hint - TS_SLACK) >> 24) & 0xFF, ((self.ts_hint + TS_SLACK) >> 24) & 0xFF
        return top == lo if lo == hi else (top == lo) | (top == hi)

    def start_ok(self, buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
        v = u_view(buf, self.u32)
        caplen = v[pos + 8]
        ok = (caplen <= MAX_RECORD) & (caplen <= v[pos + 12]) & (v[pos + 4] < self.frac_limit)
        if self.ts_hint is not None:
            ts = v[pos].astype(np.int64)
            ok &= np.abs(ts - self.ts_hint) < TS_SLACK
        return ok

    def decode(self, buf: np.ndarray, offsets: np.ndarray) -> dict[str, np.ndarray]:
        # one row per header field, each contiguous
        seconds, fraction, caplen, wirelen = np.array(words_at(buf, offsets, 4, self.u32).T, np.int64, order="C")
        return {
            "data_off": offsets + RECORD_HEADER_LEN,
            "caplen": caplen,
            "wirelen": wirelen,
            "ts_ns": seconds * 1_000_000_000 + fraction * self.header.ns_per_unit,
        }


def damage_reason(arr: np.ndarray, pos: int, fmt: PcapRecords) -> str:
    """Why the record header at ``pos`` cannot be a record's."""
    v = u_view(arr, fmt.u32)
    caplen, frac = int(v[pos + 8]), int(v[pos + 4])
    if caplen > MAX_RECORD:
        return f"corrupt record header: captured length {caplen} exceeds {MAX_RECORD}"
    if frac >= fmt.frac_limit:
        return f"corrupt record header: sub-second timestamp {frac} out of range"
    return "corrupt record header"
