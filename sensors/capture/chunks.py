"""A plain pcap file cut at fixed offsets, so that any process can read any chunk.

Chunk ``k`` holds the records whose header starts in ``[24 + k * size, 24 + (k + 1) * size)``
(a record may run past the chunk's end).  Read in order, each chunk's walk begins
where the previous one stopped, so the records are exactly those of a sequential
walk.  A process given chunk ``k`` alone finds its first record by
resynchronisation (the walk's prefilter and chain check, :mod:`sensors.capture.walk`);
whoever takes the chunks in order accepts a chunk only if that start is where the
previous chunk's walk stopped (``next_start``), and otherwise reads it again from
there.  Walking and decoding a chunk in the same process touches each page of the
file once, and nothing but the chunk's number has to cross between processes.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from sensors.capture import pcap
from sensors.capture.frames import FrameBatch
from sensors.capture.walk import PAD, Windows, chain_ok, chain_walk, is_damage, u_view

#: how far past a chunk's start its first record may begin: the one before it may be this long
_MAX_SPAN = pcap.RECORD_HEADER_LEN + pcap.MAX_RECORD
#: resynchronisation windows, tried in turn (records are rarely longer than the first)
_WINDOWS = (4096, 65536, _MAX_SPAN)


@dataclass
class Chunk:
    """The records of one chunk, and where the walk found them to begin and to continue."""

    frames: FrameBatch | None  # None when no record starts in the chunk
    start: int  # file offset of the first record at or after the chunk's start (-1: none found)
    next_start: int  # file offset of the first record at or after the chunk's end (the file's size at its end)
    damage: tuple[int, str] | None = None  # (file offset, reason): the file cannot be read past it


class PcapChunks:
    """The chunks of one plain (memory-mappable) pcap file; the mapping is opened on first use."""

    def __init__(self, path: str, chunk_bytes: int, file_index: int = 0) -> None:
        with open(path, "rb") as f:
            header = pcap.parse_global_header(f.read(pcap.GLOBAL_HEADER_LEN))
            self.size = os.fstat(f.fileno()).st_size
        if header is None:
            raise ValueError(f"{path}: not a pcap file")
        self.path, self.header, self.chunk_bytes, self.file_index = path, header, chunk_bytes, file_index
        self._mm: mmap.mmap | None = None
        self._file = np.empty(0, dtype=np.uint8)
        self._ts_hint: int | None = None

    def __len__(self) -> int:
        data = self.size - pcap.GLOBAL_HEADER_LEN
        return max(1, -(-data // self.chunk_bytes))

    def bounds(self, k: int) -> tuple[int, int]:
        start = pcap.GLOBAL_HEADER_LEN + k * self.chunk_bytes
        return start, min(start + self.chunk_bytes, self.size)

    def chunk(self, k: int, start: int | None = None) -> Chunk:
        """Chunk ``k``; ``start``: its first record's offset when known (reading in order), else found here."""
        file = self._mapped()
        a, b = self.bounds(k)
        view_end = min(self.size, b + _MAX_SPAN)
        if view_end + PAD <= len(file):
            buf = file[a : view_end + PAD]
        else:  # the file's tail: copied, for the zero padding after it
            buf = np.zeros(view_end - a + PAD, dtype=np.uint8)
            buf[: view_end - a] = file[a:view_end]
        fmt = pcap.PcapRecords(self.header, self._hint(file))
        if start is None:
            start = a if k == 0 else self._resync(fmt, buf, a, view_end)
            if start < 0:
                return Chunk(None, -1, -1)
        if start >= b:  # a record longer than the chunk covers all of it
            return Chunk(None, start, start)
        walk = chain_walk(fmt, buf, start - a, b - a)
        offsets, pos, damage = walk.offsets, walk.next_pos, None
        if walk.damaged:
            damage = (a + pos, pcap.damage_reason(buf, pos, fmt))
        elif pos < b - a:  # the record at pos starts in this chunk and ends after it (the view holds the longest)
            ok, nxt = fmt.step(buf, np.array([pos], dtype=np.int64), view_end - a)
            if ok[0]:
                offsets, pos = np.append(offsets, pos), int(nxt[0])
            elif is_damage(fmt, buf, pos, view_end - a):
                damage = (a + pos, pcap.damage_reason(buf, pos, fmt))
            else:  # plausible, but the file ends inside it
                damage = (a + pos, f"truncated record: file ends {self.size - a - pos} bytes into it")
        return Chunk(self._frames(fmt, buf, a, offsets) if len(offsets) else None, start, a + pos, damage)

    def release(self, k: int) -> None:
        """Drop chunk ``k``'s pages from this process (they stay in the page cache): resident memory stays flat."""
        if self._mm is None:
            return
        page = mmap.PAGESIZE
        a, b = self.bounds(k)
        start, end = a // page * page, min(b + _MAX_SPAN, self.size) // page * page
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _mapped(self) -> np.ndarray:
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._file = np.frombuffer(self._mm, dtype=np.uint8)
        return self._file

    def _hint(self, file: np.ndarray) -> int | None:
        """Seconds of the file's first record: resynchronisation candidates must lie near it."""
        if self._ts_hint is None and self.size >= pcap.GLOBAL_HEADER_LEN + pcap.RECORD_HEADER_LEN:
            self._ts_hint = int(u_view(file[pcap.GLOBAL_HEADER_LEN : pcap.GLOBAL_HEADER_LEN + 8],
                                       self.header.endian + "u4")[0])
        return self._ts_hint

    @staticmethod
    def _resync(fmt: pcap.PcapRecords, buf: np.ndarray, a: int, view_end: int) -> int:
        """File offset of the first plausible record start at or after ``a`` (chain check of three), or -1."""
        end = view_end - a
        for width in _WINDOWS:
            width = min(width, end)
            if width <= 0:
                break
            cand = np.flatnonzero(fmt.candidates(Windows(buf, 0, width, 1, width))[0]).astype(np.int64)
            found = cand[chain_ok(fmt, buf, cand, end)]
            if len(found):
                return a + int(found[0])
            if width == end:
                break
        return -1

    def _frames(self, fmt: pcap.PcapRecords, buf: np.ndarray, a: int, offsets: np.ndarray) -> FrameBatch:
        cols = fmt.decode(buf, offsets)
        n = len(offsets)
        return FrameBatch(buf=buf, data_off=cols["data_off"], caplen=cols["caplen"], wirelen=cols["wirelen"],
                          ts_ns=cols["ts_ns"], link_type=np.full(n, self.header.link_type, dtype=np.uint16),
                          interface_id=np.zeros(n, dtype=np.uint16), file_offset=offsets + a,
                          file_index=self.file_index, mapped_at=a)


__all__ = ["Chunk", "PcapChunks"]
