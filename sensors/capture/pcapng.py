"""pcapng files (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html).

Enhanced (EPB), Simple (SPB) and obsolete Packet (OPB) blocks carry frames;
Section Header (SHB) and Interface Description (IDB) blocks are read in Python
(there are a handful per file), every other block is skipped.  Each interface
has its own link type, ``if_tsresol`` and ``if_tsoffset``.  What Liaowang
writes (flow downloads, retained packets) is little-endian with nanosecond
interfaces: :func:`shb_block`, :func:`idb_block`, :func:`epb_block`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from sensors.capture.walk import Windows, u_view, words_at

SHB = 0x0A0D0D0A
IDB = 1
OPB = 2
SPB = 3
EPB = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_BLOCK = 64 * 1024 * 1024
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
SNAPLEN = 262144


@dataclass
class Interface:
    link_type: int
    snaplen: int
    ns_num: int = 1_000  # timestamp units -> ns is units * ns_num // ns_den
    ns_den: int = 1
    offset_s: int = 0


@dataclass
class Section:
    endian: str
    interfaces: list[Interface] = field(default_factory=list)


def is_pcapng(head: bytes) -> bool:
    return len(head) >= 12 and head[:4] == b"\x0a\x0d\x0d\x0a"


def parse_shb(block: bytes) -> Section | None:
    """A new section from its header block, or None if the byte-order magic is wrong."""
    for endian in "<>":
        (magic,) = struct.unpack(endian + "I", block[8:12])
        if magic == BYTE_ORDER_MAGIC:
            return Section(endian)
    return None


def parse_idb(block: bytes, endian: str) -> Interface:
    link_type, _reserved, snaplen = struct.unpack(endian + "HHI", block[8:16])
    iface = Interface(link_type, snaplen)
    body_end = len(block) - 4
    pos = 16
    while pos + 4 <= body_end:
        code, length = struct.unpack(endian + "HH", block[pos : pos + 4])
        value = block[pos + 4 : pos + 4 + length]
        if code == 0:
            break
        if code == OPT_IF_TSRESOL and length >= 1:
            r = value[0]
            if r & 0x80:  # power of two
                iface.ns_num, iface.ns_den = 1_000_000_000, 1 << (r & 0x7F)
            else:
                exp = r & 0x7F
                if exp <= 9:
                    iface.ns_num, iface.ns_den = 10 ** (9 - exp), 1
                else:
                    iface.ns_num, iface.ns_den = 1, 10 ** (exp - 9)
        elif code == OPT_IF_TSOFFSET and length >= 8:
            (iface.offset_s,) = struct.unpack(endian + "q", value[:8])
        pos += 4 + ((length + 3) & ~3)
    return iface


def block(kind: int, body: bytes) -> bytes:
    """One little-endian block: type, total length, ``body`` padded to 32 bits, total length."""
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def shb_block() -> bytes:
    """A section header: little-endian, version 1.0, section length unknown."""
    return block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1))


def idb_block(link_type: int) -> bytes:
    """An interface with nanosecond timestamps (``if_tsresol`` 9)."""
    tsresol = struct.pack("<HHB", OPT_IF_TSRESOL, 1, 9) + b"\0" * 3 + b"\0" * 4  # then opt_endofopt
    return block(IDB, struct.pack("<HHI", link_type, 0, SNAPLEN) + tsresol)


def epb_block(interface: int, ts_ns: int, wirelen: int, data: bytes) -> bytes:
    return block(EPB, struct.pack("<IIIII", interface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), wirelen) + data)


class PcapngBlocks:
    """The chain format of pcapng blocks, for :func:`sensors.capture.walk.chain_walk`."""

    header_len = 12
    alignment = 4

    def __init__(self, endian: str) -> None:
        self.u32 = endian + "u4"
        self.u16 = endian + "u2"

    def header_ok(self, buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        length = u_view(buf, self.u32)[pos + 4].astype(np.int64)
        return (length >= 12) & (length % 4 == 0) & (length <= MAX_BLOCK), pos + length

    def step(self, buf: np.ndarray, pos: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
        v = u_view(buf, self.u32)
        ok, nxt = self.header_ok(buf, pos)
        ok &= nxt <= end
        length = nxt - pos
        # the block's trailing copy of its length must match (only read when complete)
        trailer = v[np.where(ok, nxt - 4, pos)]
        ok &= trailer == length
        return ok, nxt

    def candidates(self, window: Windows) -> np.ndarray:
        return window.at(window.buf, 0 if self.u32[0] == "<" else 3) == EPB  # low byte of the block type

    def start_ok(self, buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return u_view(buf, self.u32)[pos] == EPB

    def decode(self, buf: np.ndarray, offsets: np.ndarray, section: Section) -> dict[str, np.ndarray]:
        """Frames of the packet blocks among ``offsets`` (other blocks are dropped)."""
        # block type, length, then EPB: interface, timestamp high, low, captured, original length
        head = words_at(buf, offsets, 7, self.u32)
        btype = head[:, 0]
        is_epb = btype == EPB
        is_spb = btype == SPB
        is_opb = btype == OPB
        sel = is_epb | is_spb | is_opb
        offs, head = offsets[sel], np.array(head[sel].T, np.int64, order="C")
        blen = head[1]
        is_epb, is_spb, is_opb = is_epb[sel], is_spb[sel], is_opb[sel]
        n = len(offs)
        iface = np.zeros(n, dtype=np.int64)
        iface[is_epb] = head[2][is_epb]
        iface[is_opb] = u_view(buf, self.u16)[offs[is_opb] + 8]
        ts_raw = (head[3].astype(np.uint64) << np.uint64(32)) | head[4].astype(np.uint64)
        caplen = head[5]
        wirelen = head[6]
        data_off = offs + 28
        # Simple Packet Block: original length only; captured = what fits in the block
        spb_orig = head[2]
        caplen = np.where(is_spb, np.minimum(spb_orig, blen - 16), caplen)
        wirelen = np.where(is_spb, spb_orig, wirelen)
        data_off = np.where(is_spb, offs + 12, data_off)
        ts_raw = np.where(is_spb, np.uint64(0), ts_raw)
        # a caplen that overruns its block is damage inside the block: clip it
        body = blen - (data_off - offs) - 4
        caplen = np.clip(caplen, 0, np.maximum(body, 0))
        ts_ns = np.zeros(n, dtype=np.int64)
        link = np.full(n, 0xFFFF, dtype=np.uint16)  # undescribed interface
        for i, itf in enumerate(section.interfaces):
            m = iface == i
            if not m.any():
                continue
            link[m] = itf.link_type
            if itf.ns_den == 1:
                t = ts_raw[m].astype(np.int64) * itf.ns_num
            else:  # finer than ns or power-of-two resolution
                t = (ts_raw[m].astype(np.float64) * (itf.ns_num / itf.ns_den)).astype(np.int64)
            ts_ns[m] = t + itf.offset_s * 1_000_000_000
        return {
            "data_off": data_off,
            "caplen": caplen,
            "wirelen": wirelen,
            "ts_ns": ts_ns,
            "link_type": link,
            "interface_id": np.minimum(iface, 0xFFFF).astype(np.uint16),
            "record_off": offs,
        }
