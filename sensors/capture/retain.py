"""Rolling packet retention: what a live sensor captured, kept as pcapng files with an index by flow key.

Each decoder process appends its batches to its own file in one directory:
``<first ns>-live-<writer>.pcapng`` while it is written, renamed
``<first ns>-<last ns>-<writer>.pcapng`` (its packets' time range) when it reaches ``file_bytes`` or
spans ``file_seconds`` of capture time.  Beside each file an index
(``.idx``: an Arrow IPC stream, one zstd-compressed record batch per packet
batch, flushed with it) lists every packet's flow-key hash, timestamp, file
offset, captured length and link type, so a flow's packets are found by its
key and time window without reading any capture, and an open file is
searchable at once.  Whenever a file is rotated, the oldest files go until
the directory fits ``max_bytes`` and nothing is older than ``max_age_s``
(capture time), whichever writer made them.

Writing costs one copy of the batch buffer, not a Python object per packet:
in a live capture's batch each frame is preceded by the ring's record header
(at least 48 bytes), and that gap becomes the previous block's padding,
options and trailer and this block's 28-byte EPB header, written with a
handful of vectorized scatters.  Gaps too small (capture files' 16-byte
record headers) or too large are cut between contiguous segments; the padding
is a custom option (code 2989) holding whatever the gap held, ring metadata.
Within a batch blocks follow the buffer's order: frames whose VLAN tag the
capture restored come after the others.

With an evidence keyring (``RetentionPolicy.keyring``) the files are sealed
(``….pcapng.sealed``, :mod:`sensors.capture.seal`): each batch is one AES-GCM
record, the index names the record of every packet, and reading a flow
decrypts only its records.  Indexes stay clear: hashes, times and lengths.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.capture import pcapng
from sensors.capture.frames import FrameBatch
from sensors.capture.seal import SUFFIX, Keyring, SealedReader, SealedWriter, is_sealed
from sensors.schema import Field, arrow_schema

EPB_HEADER = 28
OPT_CUSTOM_BINARY = 2989  # custom option, binary, not to be copied (pcapng 3.5.1)
MAX_FILLER = 256  # larger gaps are cut: a segment ends there
FILE_NAME = re.compile(r"^(\d+)-(live|\d+)-([A-Za-z0-9_]+)\.pcapng(\.sealed)?$")
INDEX_VERSION = 1
INDEX_FIELDS = [
    Field("hash", pa.uint64(), "flow-key hash of the packet (detection/flows/keys.py key_hash); 0: none"),
    Field("ts_ns", pa.int64(), "capture time, ns since the epoch"),
    Field("offset", pa.uint64(), "file offset of the packet's enhanced packet block"),
    Field("caplen", pa.uint32(), "captured bytes (the block's data follows its 28-byte header)"),
    Field("link_type", pa.uint16(), "link-layer header type of the frame"),
    Field("record", pa.uint64(), "sealed files: file offset of the encrypted record holding the block (offset is "
                                 "then into the records' plaintext); 0: the file is not sealed"),
]
INDEX_SCHEMA = arrow_schema(INDEX_FIELDS, "retention_index", INDEX_VERSION)
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")
_EPB = np.dtype([("type", "<u4"), ("length", "<u4"), ("interface", "<u4"), ("ts_high", "<u4"), ("ts_low", "<u4"),
                 ("caplen", "<u4"), ("wirelen", "<u4")])


@dataclass(frozen=True)
class RetentionPolicy:
    directory: Path
    max_bytes: int = 10 << 30  # the directory's size limit (captures and indexes)
    max_age_s: float = 0.0  # 0: no age limit
    file_bytes: int = 256 << 20  # rotate at this size ...
    file_seconds: float = 300.0  # ... or after this much capture time
    keyring: Keyring | None = None  # seal the files (AES-GCM) under its newest key


@dataclass(frozen=True)
class RetainedFile:
    path: Path
    first_ns: int
    last_ns: int | None  # None: being written
    writer: str

    @property
    def index(self) -> Path:
        return self.path.with_name(self.path.name.split(".", 1)[0] + ".idx")

    @property
    def sealed(self) -> bool:
        return is_sealed(self.path)

    @property
    def bytes(self) -> int:
        size = 0
        for p in (self.path, self.index):
            with contextlib.suppress(FileNotFoundError):
                size += p.stat().st_size
        return size


def retained_files(directory: Path) -> list[RetainedFile]:
    """The directory's capture files, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            m = FILE_NAME.match(entry.name)
            if m:
                found.append(RetainedFile(Path(entry.path), int(m.group(1)),
                                          None if m.group(2) == "live" else int(m.group(2)), m.group(3)))
    return sorted(found, key=lambda f: (f.first_ns, f.writer))


class PacketRetention:
    """One process's rolling capture files (create it in the process that writes)."""

    def __init__(self, policy: RetentionPolicy, writer: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", writer):
            raise ValueError(f"writer id {writer!r}: letters, digits and _ only")
        self.policy = policy
        self.writer = writer
        self._file: RetainedFile | None = None
        self._out: BinaryIO | None = None
        self._sealer: SealedWriter | None = None
        self._index: pa.ipc.RecordBatchStreamWriter | None = None
        self._interfaces: dict[int, int] = {}
        self._size = 0
        self._first_ns = self._last_ns = 0  # the current file's packets' time range
        policy.directory.mkdir(parents=True, exist_ok=True)

    def write(self, frames: FrameBatch, key_hash: np.ndarray) -> None:
        """Append ``frames``; ``key_hash[i]`` is frame i's flow-key hash (0: none)."""
        n = len(frames)
        if not n:
            return
        first, last = int(frames.ts_ns.min()), int(frames.ts_ns.max())
        if self._file is not None and (self._size >= self.policy.file_bytes
                                       or last - self._file.first_ns >= self.policy.file_seconds * 1e9):
            self._rotate()
        if self._file is None:
            self._open(first)
            self._first_ns, self._last_ns = first, last
        assert self._index is not None and self._out is not None
        self._first_ns, self._last_ns = min(self._first_ns, first), max(self._last_ns, last)
        link = frames.link_type
        new = [int(lt) for lt in np.unique(link) if int(lt) not in self._interfaces]
        for lt in new:
            self._interfaces[lt] = len(self._interfaces)
            self._append(pcapng.idb_block(lt))
        interface = np.zeros(n, dtype=np.uint32)
        for lt, i in self._interfaces.items():
            interface[link == lt] = i
        segments, offsets = epb_blocks(frames, interface)
        base = self._size
        for seg in segments:
            self._append(seg)
        record = 0
        if self._sealer is not None:
            record = self._sealer.tell()
            self._sealer.seal()
        self._index.write_batch(pa.RecordBatch.from_arrays([
            pa.array(key_hash, pa.uint64()), pa.array(frames.ts_ns, pa.int64()),
            pa.array(offsets.astype(np.uint64) + np.uint64(base)), pa.array(frames.caplen, pa.uint32()),
            pa.array(link, pa.uint16()), pa.array(np.full(n, record, dtype=np.uint64))], schema=INDEX_SCHEMA))
        self._out.flush()

    def close(self) -> None:
        """Finish the current file (it gets its final name)."""
        if self._file is not None:
            self._rotate()

    # -- files ---------------------------------------------------------------------------

    def _open(self, first_ns: int) -> None:
        keyring = self.policy.keyring
        path = self.policy.directory / f"{first_ns}-live-{self.writer}.pcapng{SUFFIX if keyring else ''}"
        self._file = RetainedFile(path, first_ns, None, self.writer)
        self._out = open(path, "wb")  # noqa: SIM115 (lives as long as the file is current)
        self._sealer = SealedWriter(self._out, keyring) if keyring else None
        self._index = pa.ipc.new_stream(pa.OSFile(str(self._file.index), "wb"), INDEX_SCHEMA, options=_IPC)
        self._interfaces = {}
        self._size = 0
        self._append(pcapng.shb_block())

    def _append(self, data: bytes | np.ndarray) -> None:
        assert self._out is not None
        chunk = data if isinstance(data, bytes) else data.data
        if self._sealer is not None:
            self._sealer.append(chunk)
        else:
            self._out.write(chunk)
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None and self._index is not None and self._out is not None
        self._out.close()
        self._index.close()
        _finish(self._file, self._first_ns, self._last_ns)
        self._file = self._out = self._index = self._sealer = None
        self.enforce()

    def enforce(self) -> list[Path]:
        """Delete the oldest finished files beyond the limits; finish files of writers that died. The deleted."""
        files = retained_files(self.policy.directory)
        for f in files:
            if f.last_ns is None and f.writer != self.writer and not _alive(f.writer):
                _finish(f)
        files = retained_files(self.policy.directory)
        total = sum(f.bytes for f in files)
        newest = max([self._last_ns, *(f.last_ns or f.first_ns for f in files)])
        deleted = []
        for f in files:
            if f.last_ns is None:
                continue
            too_old = self.policy.max_age_s > 0 and f.last_ns < newest - self.policy.max_age_s * 1e9
            if total <= self.policy.max_bytes and not too_old:
                continue
            size = f.bytes
            for p in (f.path, f.index):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()  # another writer may have been first
            total -= size
            deleted.append(f.path)
        return deleted


def _alive(writer: str) -> bool:
    """Whether the writer's process (``p<pid>``) still runs."""
    m = re.fullmatch(r"p(\d+)", writer)
    if not m:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(f: RetainedFile, first_ns: int | None = None, last_ns: int | None = None) -> None:
    """Give a file its final name, with its packets' time range (None: as its index lists them)."""
    if first_ns is None or last_ns is None:
        ranges = [pc.min_max(b.column("ts_ns")).as_py() for b in _index_batches(f.index) if b.num_rows]
        first_ns = min([f.first_ns, *(r["min"] for r in ranges)])
        last_ns = max([f.first_ns, *(r["max"] for r in ranges)])
    final = f.path.with_name(f"{first_ns}-{last_ns}-{f.writer}.pcapng{SUFFIX if f.sealed else ''}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(f.index, RetainedFile(final, first_ns, last_ns, f.writer).index)
    with contextlib.suppress(FileNotFoundError):
        os.replace(f.path, final)


def _index_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The index's batches; one cut short (a writer killed mid-batch) ends it."""
    try:
        with pa.OSFile(str(path), "rb") as source, pa.ipc.open_stream(source) as reader:
            while True:
                try:
                    yield reader.read_next_batch()
                except StopIteration:
                    return
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        return


def retained_frames(directory: Path, key_hash: int, first_ns: int, last_ns: int, keyring: Keyring | None = None
                    ) -> list[tuple[int, int, int, bytes]]:
    """(ts ns, wire length, link type, frame bytes) of the retained packets with flow-key hash ``key_hash``
    between ``first_ns`` and ``last_ns``, in time order (``keyring`` opens sealed files; SealError without)."""
    out = []
    for f in retained_files(directory):
        if f.last_ns is not None and (f.first_ns > last_ns or f.last_ns < first_ns):
            continue  # (a file being written may yet get anything)
        hits = []
        for batch in _index_batches(f.index):
            ts = batch.column("ts_ns")
            mask = pc.and_(pc.equal(batch.column("hash"), pa.scalar(key_hash, pa.uint64())),
                           pc.and_(pc.greater_equal(ts, first_ns), pc.less_equal(ts, last_ns)))
            if pc.any(mask).as_py():
                hits.append(batch.filter(mask))
        if hits:
            with contextlib.suppress(FileNotFoundError), open(f.path, "rb") as capture:
                blocks = _sealed_blocks(capture, keyring, f) if f.sealed else _plain_blocks(capture)
                for row in pa.Table.from_batches(hits).to_pylist():
                    block = blocks(row)
                    if block is None or len(block) < EPB_HEADER + row["caplen"]:
                        continue  # the writer was killed before this block was complete
                    header = np.frombuffer(block[:EPB_HEADER], dtype=_EPB)[0]
                    out.append((row["ts_ns"], int(header["wirelen"]), row["link_type"], block[EPB_HEADER:]))
    return sorted(out, key=lambda r: r[0])


def _plain_blocks(capture: BinaryIO) -> Callable[[dict[str, Any]], bytes | None]:
    def block(row: dict[str, Any]) -> bytes:
        capture.seek(row["offset"])
        return capture.read(EPB_HEADER + row["caplen"])
    return block


def _sealed_blocks(capture: BinaryIO, keyring: Keyring | None, f: RetainedFile
                   ) -> Callable[[dict[str, Any]], bytes | None]:
    reader = SealedReader(capture, keyring, f.path.name)
    records: dict[int, tuple[int, bytes] | None] = {}

    def block(row: dict[str, Any]) -> bytes | None:
        at = row.get("record") or 0
        if at not in records:
            records[at] = reader.record(at)
        got = records[at]
        if got is None:
            return None
        start = row["offset"] - got[0]
        return got[1][start:start + EPB_HEADER + row["caplen"]]
    return block


# -- enhanced packet blocks, vectorized ------------------------------------------------------


def epb_blocks(frames: FrameBatch, interface: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames as enhanced packet blocks: contiguous segments, and each frame's block offset in their
    concatenation (frames' order; blocks follow the buffer's order)."""
    order = np.argsort(frames.data_off, kind="stable")
    off = frames.data_off[order]
    caplen = frames.caplen[order]
    padded = (caplen + 3) & ~3
    gap = np.empty(len(off), dtype=np.int64)  # bytes from this frame's padded end to the next frame
    gap[:-1] = off[1:] - off[:-1] - padded[:-1]
    gap[-1] = -1
    # a block may end here and the next one start in the gap: room for trailer + header, 32-bit steps
    joins = (gap >= EPB_HEADER + 4) & (gap % 4 == 0) & (gap <= EPB_HEADER + 4 + MAX_FILLER)
    seg_start = np.flatnonzero(np.r_[True, ~joins[:-1]])
    seg_end = np.r_[seg_start[1:], len(off)]
    if off[0] < EPB_HEADER or len(seg_start) > max(8, len(off) // 8):
        return _joined(frames, interface, order), _offsets_of(frames, order, caplen)
    # a joined block runs to the next one's header; a segment's last one ends after its trailer
    block_len = np.where(joins, padded + gap, EPB_HEADER + padded + 4)
    segments: list[np.ndarray] = []
    offsets = np.empty(len(off), dtype=np.int64)
    pos = 0
    buf = frames.buf
    for a, b in zip(seg_start.tolist(), seg_end.tolist()):
        lo, hi = int(off[a]) - EPB_HEADER, int(off[b - 1] + padded[b - 1]) + 4
        seg = np.zeros(hi - lo, dtype=np.uint8)
        have = min(hi, len(buf)) - lo
        seg[:have] = buf[lo:lo + have]
        rows = order[a:b]
        start = off[a:b] - EPB_HEADER - lo
        _scatter_blocks(seg, start, frames, rows, interface, caplen[a:b], padded[a:b], block_len[a:b])
        offsets[rows] = pos + start
        pos += len(seg)
        segments.append(seg)
    return segments, offsets


def _scatter_blocks(seg: np.ndarray, start: np.ndarray, frames: FrameBatch, rows: np.ndarray, interface: np.ndarray,
                    caplen: np.ndarray, padded: np.ndarray, block_len: np.ndarray) -> None:
    """Write headers, padding, filler options and trailers around frames already in place in ``seg``."""
    header = np.zeros(len(rows), dtype=_EPB)
    header["type"] = pcapng.EPB
    header["length"] = block_len
    header["interface"] = interface[rows]
    ts = frames.ts_ns[rows].astype(np.uint64)
    header["ts_high"] = ts >> np.uint64(32)
    header["ts_low"] = ts & np.uint64(0xFFFFFFFF)
    header["caplen"] = caplen
    header["wirelen"] = frames.wirelen[rows]
    _put(seg, start, header.view(np.uint8).reshape(-1, EPB_HEADER))
    data_end = start + EPB_HEADER + caplen
    for k in range(3):  # zero the frame's padding to 32 bits
        m = padded - caplen > k
        seg[data_end[m] + k] = 0
    options = start + EPB_HEADER + padded
    filler = block_len - EPB_HEADER - padded - 4
    end_of_options = filler == 4
    _put(seg, options[end_of_options], np.zeros((int(end_of_options.sum()), 4), dtype=np.uint8))
    custom = filler >= 8
    opt = np.zeros(int(custom.sum()), dtype=[("code", "<u2"), ("length", "<u2"), ("pen", "<u4")])
    opt["code"] = OPT_CUSTOM_BINARY
    opt["length"] = filler[custom] - 4
    _put(seg, options[custom], opt.view(np.uint8).reshape(-1, 8))
    trailer = block_len.astype("<u4").view(np.uint8).reshape(-1, 4)
    _put(seg, start + block_len - 4, trailer)


def _put(seg: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
    """``seg[at[i]:at[i] + w] = rows[i]`` for every i (``rows``: (n, w) bytes)."""
    if len(at):
        seg[at[:, None] + np.arange(rows.shape[1])] = rows


def _joined(frames: FrameBatch, interface: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
    """Blocks built one frame at a time: for buffers whose gaps cannot hold the headers (capture files)."""
    buf = frames.buf
    blocks = [pcapng.epb_block(int(interface[i]), int(frames.ts_ns[i]), int(frames.wirelen[i]),
                               buf[int(frames.data_off[i]):int(frames.data_off[i] + frames.caplen[i])].tobytes())
              for i in order.tolist()]
    return [np.frombuffer(b"".join(blocks), dtype=np.uint8)]


def _offsets_of(frames: FrameBatch, order: np.ndarray, caplen: np.ndarray) -> np.ndarray:
    sizes = EPB_HEADER + ((caplen + 3) & ~3) + 4
    offsets = np.empty(len(order), dtype=np.int64)
    offsets[order] = np.r_[0, np.cumsum(sizes)[:-1]]
    return offsets


__all__ = ["INDEX_FIELDS", "INDEX_SCHEMA", "INDEX_VERSION", "PacketRetention", "RetainedFile", "RetentionPolicy",
           "epb_blocks", "retained_files", "retained_frames"]
