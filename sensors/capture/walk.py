"""Vectorized walk over a chain of length-prefixed records (pcap records, pcapng blocks).

A capture file is a linked list: each record's start is the previous start plus
its length.  A Python loop over that chain costs ~0.5 s per million records,
more than the whole decode budget, so the walk is done with numpy:

1. the chunk is cut into ``K`` segments; for each segment boundary a cheap,
   format-specific prefilter proposes record starts inside a small window and
   a chain check (the proposed record and its successors are plausible) picks
   the first one;
2. all ``K`` walkers then advance one record per numpy step, each until it
   reaches the next segment's start;
3. every walker must land *exactly* on the next segment's start.  Walker 0
   starts at a known record, so by induction the joined chain is the true one;
   a walker that overshoots shows that the next start was a false guess, and
   the walk restarts from the last verified record.

Segments whose window holds no record start are simply merged into the
previous one, so the window can be small.  The result is identical to a
sequential walk (tests compare both on every bundled capture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Bytes of zero padding kept after the data in every chunk buffer, so that
#: field reads past a truncated record never leave the array.
PAD = 256


def u_view(buf: np.ndarray, dtype: str) -> np.ndarray:
    """An array of overlapping unaligned integers, one starting at every byte.

    ``u_view(buf, '<u4')[pos]`` reads the little-endian uint32 at each byte
    offset in ``pos`` with a single gather.
    """
    dt = np.dtype(dtype)
    return np.ndarray(shape=(len(buf) - dt.itemsize + 1,), dtype=dt, buffer=buf, strides=(1,))


def words_at(buf: np.ndarray, pos: np.ndarray, count: int, dtype: str) -> np.ndarray:
    """``count`` consecutive integers of ``dtype`` at each offset in ``pos``: a (len(pos), count) array.

    One gather of ``count * itemsize``-byte items: several times faster than
    ``count`` gathers through :func:`u_view` (numpy copies opaque items
    directly, and each record header is fetched from memory once).
    """
    size = np.dtype(dtype).itemsize * count
    items = np.ndarray(shape=(len(buf) - size + 1,), dtype=np.dtype(f"V{size}"), buffer=buf, strides=(1,))
    return items[pos].view(dtype).reshape(len(pos), count)


class ChainFormat(Protocol):
    """What the walker needs to know about one record format."""

    #: bytes of a record header that must be present to read its length
    header_len: int
    #: records start at offsets congruent to this modulus (pcapng: 4)
    alignment: int

    def step(self, buf: np.ndarray, pos: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
        """For records at ``pos``: (complete and plausible, next record offset)."""
        ...

    def header_ok(self, buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``step`` but judging the header alone (the record may run past the data)."""
        ...

    def candidates(self, window: Windows) -> np.ndarray:
        """Cheap prefilter, one byte per position: bool matrix (segments, width) of possible record starts."""
        ...

    def start_ok(self, buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Full check of one record start, for candidates that passed the prefilter."""
        ...


class Windows:
    """Zero-copy 2-D views of the resynchronisation windows.

    Row ``k`` covers bytes ``first + k * stride`` onwards, ``width`` of them;
    ``at(view, off)[k, j]`` is ``view[first + k * stride + j + off]``.  No gather.
    """

    def __init__(self, buf: np.ndarray, first: int, stride: int, count: int, width: int) -> None:
        self.buf, self.first, self.stride, self.count, self.width = buf, first, stride, count, width

    def at(self, view: np.ndarray, off: int) -> np.ndarray:
        base = view[self.first + off :]
        return np.lib.stride_tricks.as_strided(
            base, shape=(self.count, self.width), strides=(self.stride * base.strides[0], base.strides[0]), writeable=False
        )


@dataclass
class WalkResult:
    offsets: np.ndarray  # int64 record starts, in file order
    next_pos: int  # first byte not consumed (start of an incomplete record, or end)
    damaged: bool  # True if the walk stopped at an implausible record header


def sequential_walk(fmt: ChainFormat, buf: np.ndarray, start: int, end: int) -> WalkResult:
    """Reference walk, one record at a time (used for small chunks and in tests)."""
    offsets: list[int] = []
    pos = start
    while pos + fmt.header_len <= end:
        ok, nxt = fmt.step(buf, np.array([pos], dtype=np.int64), end)
        if not ok[0]:
            return WalkResult(np.array(offsets, dtype=np.int64), pos, is_damage(fmt, buf, pos, end))
        offsets.append(pos)
        pos = int(nxt[0])
    return WalkResult(np.array(offsets, dtype=np.int64), pos, False)


def is_damage(fmt: ChainFormat, buf: np.ndarray, pos: int, end: int) -> bool:
    """A record that fails ``step`` is damage unless it is merely cut off by ``end``."""
    if pos + fmt.header_len > end:
        return False
    ok, nxt = fmt.header_ok(buf, np.array([pos], dtype=np.int64))
    # plausible apart from running past the data: incomplete, not damaged
    return not (bool(ok[0]) and int(nxt[0]) > end)


def chain_walk(
    fmt: ChainFormat,
    buf: np.ndarray,
    start: int,
    end: int,
    segment_bytes: int = 65536,
    window: int = 2048,
) -> WalkResult:
    """Walk all complete records in ``buf[start:end]`` (see module docstring).

    ``segment_bytes``: 64 KiB walks a 64 MiB chunk with ~1,000 walkers, ~80 records each; 32 KiB
    segments cost 10-25% more (twice the prefilter windows to scan, for fewer steps).
    """
    parts: list[np.ndarray] = []
    pos = start
    while True:
        if end - pos < 4 * segment_bytes:
            tail = sequential_walk(fmt, buf, pos, end)
            parts.append(tail.offsets)
            return WalkResult(_concat(parts), tail.next_pos, tail.damaged)
        offsets, verified_end, status = _parallel_pass(fmt, buf, pos, end, segment_bytes, window)
        parts.append(offsets)
        if status == "done":
            return WalkResult(_concat(parts), verified_end, False)
        if status == "damaged":
            return WalkResult(_concat(parts), verified_end, True)
        pos = verified_end  # a false segment start: resume from the last verified record


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _find_starts(
    fmt: ChainFormat, buf: np.ndarray, start: int, end: int, segment_bytes: int, window: int
) -> np.ndarray:
    """Guessed record starts: ``start`` itself, then at most one per later segment."""
    align = fmt.alignment
    seg_starts = np.arange(start + segment_bytes, end - window - fmt.header_len, segment_bytes, dtype=np.int64)
    assert segment_bytes % align == 0
    if len(seg_starts) == 0:
        return np.array([start], dtype=np.int64)
    stride = segment_bytes  # a multiple of every alignment in use
    mask = fmt.candidates(Windows(buf, int(seg_starts[0]), stride, len(seg_starts), window))
    if align > 1:
        mask[:, np.arange(window) % align != 0] = False
    flat = np.flatnonzero(mask)
    seg_idx, col = np.divmod(flat, window)
    cand = seg_starts[seg_idx] + col
    ok = chain_ok(fmt, buf, cand, end)
    seg_idx, cand = seg_idx[ok], cand[ok]
    # first surviving candidate of each segment (nonzero() yields row-major order)
    first = np.ones(len(seg_idx), dtype=bool)
    first[1:] = seg_idx[1:] != seg_idx[:-1]
    return np.concatenate([[start], cand[first]]).astype(np.int64)


def chain_ok(fmt: ChainFormat, buf: np.ndarray, cand: np.ndarray, end: int) -> np.ndarray:
    """Chain check of guessed record starts: the candidate and its next two successors pass the full test
    (or the data ends before them)."""
    ok = np.ones(len(cand), dtype=bool)
    p = cand
    for _ in range(3):
        at_end = p >= end
        good, nxt = fmt.step(buf, p, end)
        good &= fmt.start_ok(buf, p)
        ok &= good | at_end
        p = np.where(good, nxt, end)
    return ok


def _parallel_pass(
    fmt: ChainFormat, buf: np.ndarray, start: int, end: int, segment_bytes: int, window: int
) -> tuple[np.ndarray, int, str]:
    starts = _find_starts(fmt, buf, start, end, segment_bytes, window)
    k = len(starts)
    stops = np.append(starts[1:], end)
    pos = starts.copy()
    good_end = np.zeros(k, dtype=bool)  # walker stopped because it reached its stop
    steps_pos: list[np.ndarray] = []
    steps_good: list[np.ndarray] = []
    # the walkers still inside their segment: ids, positions and stops side by side, so a step reads and
    # writes no per-walker table (most steps are a few hundred walkers: numpy calls, not data, cost there)
    idx, cur, stop = np.arange(k), starts.copy(), stops.copy()
    while len(idx):
        good, nxt = fmt.step(buf, cur, end)
        steps_pos.append(cur)
        steps_good.append(good)
        every = bool(good.all())
        reached = nxt >= stop if every else good & (nxt >= stop)
        if not every:
            bad = ~good
            pos[idx[bad]] = cur[bad]  # stopped at an implausible or incomplete record
        if every and not reached.any():
            cur = nxt
            continue
        pos[idx[reached]] = nxt[reached]
        good_end[idx[reached]] = True
        keep = ~reached if every else good & ~reached
        idx, cur, stop = idx[keep], nxt[keep], stop[keep]
    kept = np.concatenate(steps_good) if steps_good else np.empty(0, dtype=bool)
    # each walker's records lie in [its start, its stop): the offsets are distinct, and sorted they are in
    # file order, walker by walker
    offs = np.sort(np.concatenate(steps_pos)[kept]) if steps_pos else np.empty(0, dtype=np.int64)
    # verification: walker j is trusted if j == 0 or walker j-1 landed exactly on starts[j]
    exact = good_end & (pos == stops)
    bad = np.flatnonzero(~exact)
    if len(bad) == 0:
        return offs, end if pos[-1] == end else int(pos[-1]), "done"
    j = int(bad[0])  # walkers 0..j are trusted; walker j did not land exactly
    keep = offs < stops[j]
    if good_end[j]:
        # overshot starts[j+1]: that start was a false guess; resume from pos[j]
        return offs[keep], int(pos[j]), "resync"
    # walker j stopped at an implausible or incomplete record inside its segment
    stop_at = int(pos[j])
    return offs[keep], stop_at, "damaged" if is_damage(fmt, buf, stop_at, end) else "done"
