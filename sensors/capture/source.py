"""Capture files as a stream of :class:`FrameBatch` chunks with bounded memory.

Each file is read into one reusable buffer (``chunk_bytes`` plus the carried-over
partial record); memory stays flat whatever the file size.  gzip-compressed
files are read through :mod:`gzip` the same way.  Damage (a truncated or corrupt
record) ends that file: everything before it is delivered and the damage is
reported with its offset.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import numpy as np

from sensors.capture import pcap, pcapng
from sensors.capture.chunks import PcapChunks
from sensors.capture.frames import FrameBatch
from sensors.capture.walk import PAD, chain_walk, u_view

DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
#: a replay's chunks: every batch costs its stages a fixed ~60 ms, so a replay, which waits for no one, reads
#: larger ones (64 MiB: 1M packets 15% faster with the rules than 32 MiB, peak memory 525 -> 695 MiB; 128 MiB
#: is slower again, the pipeline taking longer to fill).  A streaming sensor keeps DEFAULT_CHUNK_BYTES: a
#: batch's first packet waits for its last before it is published.
REPLAY_CHUNK_BYTES = 64 * 1024 * 1024
#: a replay with detection reads larger batches than a flow meter (REPLAY_CHUNK_BYTES): its main process
#: has a fixed cost per batch in the rule windows, detectors and signalling stages on top of the flow
#: table's, and sets the pace.  1M packets with all rules, paired: 96 MiB against 64 MiB -1.8% and -3.2%
#: wall time (CPU -3.8%, -4.4%; 12 and 10 pairs), the short-flows capture unchanged; peak memory 500 ->
#: 630 MiB.  A flow meter's decoders set its pace, and its last chunks then leave one idle longer: 96 MiB
#: there was 3.7% slower.
DETECTION_CHUNK_BYTES = 96 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".dmp")


class CaptureError(Exception):
    """A file that cannot be read as a capture at all (one clear message)."""


@dataclass
class Damage:
    path: str
    offset: int  # byte offset in the (decompressed) file
    reason: str


def _open(path: str) -> BinaryIO:
    raw = open(path, "rb")
    head = raw.read(2)
    raw.seek(0)
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def sniff(path: str) -> str:
    """'pcap' or 'pcapng'; raises CaptureError for anything else."""
    try:
        with _open(path) as f:
            head = f.read(24)
    except OSError as exc:  # includes gzip.BadGzipFile
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except EOFError:
        raise CaptureError(f"{path}: compressed stream ends before the capture header") from None
    except zlib.error as exc:
        raise CaptureError(f"{path}: compressed stream is damaged before the capture header: {exc}") from None
    if pcap.parse_global_header(head) is not None:
        return "pcap"
    if pcapng.is_pcapng(head):
        return "pcapng"
    if not head:
        raise CaptureError(f"{path}: empty file, not a capture")
    shown = head[:8].hex(" ")
    raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {shown})")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files named, files under directories (recursively) and glob matches.

    Explicitly named files must be captures (CaptureError otherwise); files found
    under a directory are kept only if they look like captures.
    """
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _dirs, names in os.walk(item):
                for name in sorted(names):
                    p = os.path.join(root, name)
                    if name.lower().endswith(CAPTURE_SUFFIXES):
                        try:
                            sniff(p)
                        except CaptureError:
                            continue
                        files.append(p)
        elif os.path.exists(item):
            sniff(item)
            files.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise CaptureError(f"{item}: no such file, directory or glob match")
            files.extend(expand_inputs(matches))
    return files


def order_by_time(files: list[str]) -> list[str]:
    """Files sorted by the timestamp of their first frame (unreadable ones last)."""

    def first_ts(path: str) -> tuple[int, str]:
        for batch in read_frames(path, chunk_bytes=1 << 16, max_batches=1):
            if len(batch):
                return int(batch.ts_ns[0]), path
        return 1 << 62, path

    return [p for _, p in sorted(first_ts(p) for p in files)]


class _ChunkBuffer:
    """One growable byte buffer that holds unconsumed data followed by zero padding.

    For compressed files: the stream is read into it.  ``arr[0]`` is at file
    offset ``base``; ``arr[:filled]`` is data.
    """

    def __init__(self, f: BinaryIO, size: int, base: int = 0) -> None:
        self.f = f
        self.arr = np.zeros(size + PAD, dtype=np.uint8)
        self.filled = 0
        self.base = base
        self.eof = False

    def fill(self) -> None:
        view = memoryview(self.arr.data)
        cap = len(self.arr) - PAD
        while self.filled < cap and not self.eof:
            n = self.f.readinto(view[self.filled : cap])  # type: ignore[attr-defined]
            if not n:
                self.eof = True
                break
            self.filled += n
        self.arr[self.filled : self.filled + PAD] = 0

    def full(self) -> bool:
        return self.filled == len(self.arr) - PAD

    def consume(self, upto: int) -> None:
        rest = self.filled - upto
        if rest and upto:
            self.arr[:rest] = self.arr[upto : self.filled]
        self.filled = rest
        self.base += upto

    def mapped_at(self) -> int:
        return -1

    def grow(self) -> None:
        new = np.zeros(2 * (len(self.arr) - PAD) + PAD, dtype=np.uint8)
        new[: self.filled] = self.arr[: self.filled]
        self.arr = new


class _MappedFile:
    """The same interface over a memory-mapped file: windows are views, not copies.

    Reading an 800 MB capture with ``readinto`` costs ~0.2 s of copying; mapped
    pages cost ~0.02 s.  Only the last window of the file is copied, to get the
    zero padding.  Consumed pages are released (MADV_DONTNEED), so resident
    memory stays flat however large the file.  The mapping is released with the
    last array that views it (a caller may still hold the final batch).
    """

    def __init__(self, f: BinaryIO, size: int, base: int = 0) -> None:
        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._file = np.frombuffer(self._mm, dtype=np.uint8)
        self._size = size
        self._released = 0
        self.arr = self._file[:0]
        self.filled = 0
        self.base = base
        self.eof = False

    def fill(self) -> None:
        total = len(self._file)
        n = min(self._size, total - self.base)
        if self.base + n + PAD <= total:
            self.arr = self._file[self.base : self.base + n + PAD]
        else:  # the file's tail: copy, to have the zero padding after it
            self.arr = np.zeros(n + PAD, dtype=np.uint8)
            self.arr[:n] = self._file[self.base : self.base + n]
        self.filled = n
        self.eof = self.base + n >= total

    def full(self) -> bool:
        return not self.eof and self.filled == self._size

    def mapped_at(self) -> int:
        return self.base

    def consume(self, upto: int) -> None:
        self.base += upto
        self.filled -= upto
        page = mmap.PAGESIZE
        done = (self.base // page) * page
        if done - self._released >= 64 * page and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
            self._released = done

    def grow(self) -> None:
        self._size *= 2


Buffer = _ChunkBuffer | _MappedFile


def _buffer(f: BinaryIO, size: int, base: int) -> Buffer:
    """A mapped file when possible (plain files), else a read buffer (gzip, pipes)."""
    if isinstance(f, io.BufferedReader):
        try:
            return _MappedFile(f, size, base)
        except (OSError, ValueError):  # not mappable (special files, empty files)
            pass
    return _ChunkBuffer(f, size, base)


def read_frames(
    path: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    file_index: int = 0,
    damages: list[Damage] | None = None,
    max_batches: int | None = None,
) -> Iterator[FrameBatch]:
    """Yield the frames of one file in chunks.  A batch is valid until the next one."""
    kind = sniff(path)
    damages = damages if damages is not None else []
    with _open(path) as f:
        reader = _read_pcap if kind == "pcap" else _read_pcapng
        try:
            yield from reader(path, f, chunk_bytes, file_index, damages, max_batches)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            damages.append(Damage(path, -1, f"read error: {exc}"))


def _read_pcap(
    path: str, f: BinaryIO, chunk_bytes: int, file_index: int, damages: list[Damage], max_batches: int | None
) -> Iterator[FrameBatch]:
    if isinstance(f, io.BufferedReader) and os.path.isfile(path):  # a plain file: mapped, in fixed chunks
        yield from _read_pcap_chunks(path, chunk_bytes, file_index, damages, max_batches)
        return
    header = pcap.parse_global_header(f.read(pcap.GLOBAL_HEADER_LEN))
    assert header is not None  # sniffed
    buf = _buffer(f, chunk_bytes, pcap.GLOBAL_HEADER_LEN)
    fmt = pcap.PcapRecords(header)
    batches = 0
    while True:
        buf.fill()
        if buf.filled >= pcap.RECORD_HEADER_LEN:  # the chunk's first record is a known one
            fmt.ts_hint = int(u_view(buf.arr, fmt.u32)[0])
        walk = chain_walk(fmt, buf.arr, 0, buf.filled)
        if len(walk.offsets):
            cols = fmt.decode(buf.arr, walk.offsets)
            n = len(walk.offsets)
            yield FrameBatch(
                buf=buf.arr,
                data_off=cols["data_off"],
                caplen=cols["caplen"],
                wirelen=cols["wirelen"],
                ts_ns=cols["ts_ns"],
                link_type=np.full(n, header.link_type, dtype=np.uint16),
                interface_id=np.zeros(n, dtype=np.uint16),
                file_offset=walk.offsets + buf.base,
                file_index=file_index,
                mapped_at=buf.mapped_at(),
            )
            batches += 1
            if max_batches is not None and batches >= max_batches:
                return
        if walk.damaged:
            damages.append(Damage(path, buf.base + walk.next_pos, pcap.damage_reason(buf.arr, walk.next_pos, fmt)))
            return
        if walk.next_pos == 0 and buf.full():
            buf.grow()  # one record larger than the buffer
            continue
        buf.consume(walk.next_pos)
        if buf.eof:
            if buf.filled:
                damages.append(Damage(path, buf.base, f"truncated record: file ends {buf.filled} bytes into it"))
            return


def _read_pcap_chunks(path: str, chunk_bytes: int, file_index: int, damages: list[Damage], max_batches: int | None
                      ) -> Iterator[FrameBatch]:
    """A plain pcap file's chunks in order (:mod:`sensors.capture.chunks`), each walked from where the last stopped."""
    chunks = PcapChunks(path, chunk_bytes, file_index)
    start = pcap.GLOBAL_HEADER_LEN
    batches = 0
    for k in range(len(chunks)):
        chunk = chunks.chunk(k, start)
        if chunk.frames is not None:
            yield chunk.frames
            batches += 1
        chunks.release(k)
        if chunk.damage is not None:
            damages.append(Damage(path, *chunk.damage))
            return
        if max_batches is not None and batches >= max_batches:
            return
        start = chunk.next_start


def _read_pcapng(
    path: str, f: BinaryIO, chunk_bytes: int, file_index: int, damages: list[Damage], max_batches: int | None
) -> Iterator[FrameBatch]:
    buf = _buffer(f, chunk_bytes, 0)
    section: pcapng.Section | None = None
    fmt: pcapng.PcapngBlocks | None = None
    batches = 0
    while True:
        buf.fill()
        start = 0
        # a section header at the front of the buffer (the first block, or a new section)
        if buf.filled - start >= 12 and bytes(buf.arr[start : start + 4]) == b"\x0a\x0d\x0d\x0a":
            shb = _whole_block(buf, start)
            if shb is None:
                if buf.eof:
                    damages.append(Damage(path, buf.base, "truncated section header block"))
                    return
                buf.grow()
                continue
            new = pcapng.parse_shb(shb)
            if new is None:
                damages.append(Damage(path, buf.base, "corrupt section header block (bad byte-order magic)"))
                return
            section, fmt = new, pcapng.PcapngBlocks(new.endian)
            start += len(shb)
        if section is None or fmt is None:
            damages.append(Damage(path, buf.base, "no section header block"))
            return
        walk = chain_walk(fmt, buf.arr, start, buf.filled)
        offsets = walk.offsets
        next_pos = walk.next_pos
        damaged = walk.damaged
        btype = u_view(buf.arr, fmt.u32)[offsets]
        new_section = np.flatnonzero(btype == pcapng.SHB)
        if len(new_section):
            cut = int(new_section[0])
            next_pos, damaged = int(offsets[cut]), False
            offsets, btype = offsets[:cut], btype[:cut]
        for off in offsets[btype == pcapng.IDB]:
            blen = int(u_view(buf.arr, fmt.u32)[off + 4])
            section.interfaces.append(pcapng.parse_idb(bytes(buf.arr[off : off + blen]), section.endian))
        if len(offsets):
            cols = fmt.decode(buf.arr, offsets, section)
            if len(cols["data_off"]):
                yield FrameBatch(
                    buf=buf.arr,
                    data_off=cols["data_off"],
                    caplen=cols["caplen"],
                    wirelen=cols["wirelen"],
                    ts_ns=cols["ts_ns"],
                    link_type=cols["link_type"],
                    interface_id=cols["interface_id"],
                    file_offset=cols["record_off"] + buf.base,
                    file_index=file_index,
                    mapped_at=buf.mapped_at(),
                )
                batches += 1
                if max_batches is not None and batches >= max_batches:
                    return
        if damaged:
            damages.append(Damage(path, buf.base + next_pos, "corrupt block: bad length or trailer"))
            return
        if next_pos == 0 and buf.full():
            buf.grow()
            continue
        buf.consume(next_pos)
        if buf.eof and next_pos == 0:  # nothing left that makes progress
            if buf.filled:
                damages.append(Damage(path, buf.base, f"truncated block: file ends {buf.filled} bytes into it"))
            return


def _whole_block(buf: Buffer, start: int) -> bytes | None:
    """The complete block at ``start`` (SHB length is read in both byte orders)."""
    raw = bytes(buf.arr[start + 4 : start + 12])
    magic_le = struct.unpack("<I", raw[4:8])[0]
    endian = "<" if magic_le == pcapng.BYTE_ORDER_MAGIC else ">"
    (length,) = struct.unpack(endian + "I", raw[:4])
    if length < 12 or start + length > buf.filled:
        return None
    return bytes(buf.arr[start : start + length])


class CaptureFiles:
    """Capture files as a :class:`~sensors.capture.frames.FrameSource`, in the order given."""

    live = False

    def __init__(self, files: list[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.files, self.chunk_bytes = files, chunk_bytes

    def label(self, file_index: int) -> str:
        return self.files[file_index]

    def chunked(self) -> list[PcapChunks] | None:
        """Every file as chunks that any process can read (:mod:`sensors.capture.chunks`), or None unless each
        one is a plain pcap file (gzip and pcapng files are read in order)."""
        chunked = []
        for i, path in enumerate(self.files):
            if not os.path.isfile(path):
                return None
            try:
                chunked.append(PcapChunks(path, self.chunk_bytes, file_index=i))
            except ValueError:  # gzip or pcapng
                return None
        return chunked

    def batches(self, damages: list[Damage], shm_dir: str | None = None
                ) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
        for i, path in enumerate(self.files):
            for frames in read_frames(path, self.chunk_bytes, file_index=i, damages=damages):
                if len(frames):
                    yield frames, MappedFrames.of(path, frames)


class MappedFrames(NamedTuple):
    """A :class:`FrameBatch` without its bytes, for a process that maps the same file."""

    path: str
    buf_len: int
    frames: FrameBatch
    owned: bool = False  # a live capture's batch file: whoever maps it removes it

    @classmethod
    def of(cls, path: str, frames: FrameBatch) -> MappedFrames | None:
        """None unless the batch's bytes are in a memory-mapped file (not for gzip or pipes)."""
        if frames.mapped_at < 0:
            return None
        return cls(path, len(frames.buf), dataclasses.replace(frames, buf=np.empty(0, dtype=np.uint8)))

    @classmethod
    def handed_over(cls, path: str, frames: FrameBatch) -> MappedFrames:
        """A live capture's batch built in its own file at ``path``: whoever maps it removes the file."""
        return cls(path, len(frames.buf), dataclasses.replace(frames, buf=np.empty(0, dtype=np.uint8), mapped_at=0),
                   owned=True)


class FrameMapper:
    """Re-attaches :class:`MappedFrames` to the bytes of their file, mapped once per file.

    The batch gets exactly the bytes its reader saw (a view of the mapping, or a
    zero-padded copy of the file's tail).  ``release`` drops the mapped pages of
    a decoded batch from this process (they stay in the page cache), so
    resident memory stays flat here too.
    """

    def __init__(self) -> None:
        self._path = ""
        self._mm: mmap.mmap | None = None
        self._file = np.empty(0, dtype=np.uint8)

    def attach(self, ref: MappedFrames) -> FrameBatch:
        if ref.path != self._path:
            self._file = np.empty(0, dtype=np.uint8)  # the old mapping goes with its last view
            with open(ref.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._file, self._path = np.frombuffer(self._mm, dtype=np.uint8), ref.path
            if ref.owned:
                os.unlink(ref.path)  # the mapping keeps the bytes while they are needed
        start, end = ref.frames.mapped_at, ref.frames.mapped_at + ref.buf_len
        if end <= len(self._file):
            buf = self._file[start:end]
        else:
            buf = np.zeros(ref.buf_len, dtype=np.uint8)
            buf[: len(self._file) - start] = self._file[start:]
        return dataclasses.replace(ref.frames, buf=buf)

    def release(self, frames: FrameBatch) -> None:
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = frames.mapped_at // page * page
        end = min(frames.mapped_at + len(frames.buf), len(self._file)) // page * page
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)


__all__ = ["CaptureError", "CaptureFiles", "Damage", "FrameMapper", "MappedFrames", "expand_inputs", "order_by_time",
           "read_frames", "sniff"]
