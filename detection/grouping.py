"""Group-by over Arrow key columns with numpy, for the small tables of the detection stages.

An Acero group-by costs ~0.3 ms a call whatever the table's size, and the first
one in a process loads Acero (~20 ms); the rule and window stages group a few
thousand rows many times per batch.  Here the keys are turned into integers
(:func:`key_parts`), mixed into one 64-bit hash and sorted once
(:func:`grouped`, with :func:`group_by_hash`, which the flow table uses too).
Groups come in the order of their first row, and a group's rows in their input
order, so "first" means the first row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.flows.keys import ip_halves
from sensors.masks import one_chunk, present

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def key_parts(col: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """A key column as int64 arrays that are equal where its values are (every null: one value)."""
    col = one_chunk(col)
    valid = present(col)
    if pa.types.is_fixed_size_binary(col.type) and col.type.byte_width == 16:  # an address
        halves = np.where(valid[:, None], ip_halves(col, None), np.uint64(0))  # a null's bytes: anything
        return [valid.astype(np.int64), halves[:, 0].view(np.int64), halves[:, 1].view(np.int64)]
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
            or pa.types.is_temporal(col.type)):  # text, bytes
        codes = pc.fill_null(one_chunk(pc.dictionary_encode(col).indices), -1)
        return [np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)]
    if pa.types.is_temporal(col.type):
        col = col.cast(pa.int64())
    values = np.asarray(pc.fill_null(col, False if pa.types.is_boolean(col.type) else pa.scalar(0, col.type))
                        .to_numpy(zero_copy_only=False))
    if values.dtype.kind == "f":
        values = (values + 0.0).view(np.int64)  # -0.0 and 0.0 are one value
    return [valid.astype(np.int64), values.astype(np.int64)]


def run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins in a sorted array (positions; none for an empty one)."""
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return np.flatnonzero(first)


def unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array, by one sort: numpy 2.4's own takes ~20x longer on 40,000 values
    and ~100x on 500,000."""
    v = np.sort(values)
    return v[run_starts(v)]


def group_by_hash(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``np.argsort(hashes, kind="stable")``, the hashes in that order), ~5x faster.

    numpy's stable sort of 64-bit keys is a merge sort; its default sort is SIMD and ~10x faster, and stable
    for distinct keys.  So each hash's top bits are joined to its position (as low bits) in one distinct
    64-bit key.  Two different hashes that share those top bits (~1 batch in 10^6 at 20,000 flows) would
    interleave: then, and for batches too large to leave room, the stable sort decides.
    """
    n = len(hashes)
    shift = np.uint64(max(n - 1, 1).bit_length())
    if shift > 24:
        order = np.argsort(hashes, kind="stable")
        return order, hashes[order]
    keyed = ((hashes >> shift) << shift) | np.arange(n, dtype=np.uint64)
    keyed.sort()
    order = (keyed & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    h = hashes[order]
    top = keyed >> shift
    if not np.array_equal(h[1:] != h[:-1], top[1:] != top[:-1]):  # a shared prefix: groups interleaved
        order = np.argsort(hashes, kind="stable")
        h = hashes[order]
    return order, h


def grouped(parts: list[np.ndarray], exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rows with equal values in every part, as groups: (the rows ordered by group, where each group
    starts), groups in order of their first row and rows in their order within a group.

    The parts are mixed into one 64-bit hash and sorted once; should two groups share a hash, they are
    told apart by sorting on every part (``exact``: at once; slower).
    """
    n = len(parts[0])
    new = np.ones(n, dtype=bool)
    if not exact:
        h = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for part in parts:
                h = (h ^ part.view(np.uint64)) * _GOLDEN
                h ^= h >> np.uint64(29)
        order, sorted_h = group_by_hash(h)
        np.not_equal(sorted_h[1:], sorted_h[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        group = np.cumsum(new) - 1
        exact = any(not np.array_equal(p[order], p[order[starts]][group]) for p in parts)  # a shared hash
    if exact:
        order = np.lexsort(parts[::-1])
        new[1:] = np.any([p[order][1:] != p[order][:-1] for p in parts], axis=0)
        starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, n))
    by_first = np.argsort(order[starts])  # the stable sorts put each group's first row at its start
    lengths = lengths[by_first]
    new_starts = np.cumsum(lengths) - lengths
    return order[np.arange(n) + np.repeat(starts[by_first] - new_starts, lengths)], new_starts


class Groups:
    """The groups of rows with equal ``keys`` (and ``parts``, integer keys of their own): aggregates
    are one numpy reduction each, one value per group."""

    def __init__(self, keys: list[pa.Array | pa.ChunkedArray], parts: list[np.ndarray] | None = None) -> None:
        all_parts = [*(parts or []), *(p for k in keys for p in key_parts(k))]
        self.size = len(all_parts[0])
        if self.size:
            self.rows, self.starts = grouped(all_parts)
        else:
            self.rows = self.starts = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def first(self) -> np.ndarray:
        """Each group's first row."""
        return self.rows[self.starts]

    def count(self) -> np.ndarray:
        return np.diff(np.append(self.starts, self.size))

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.add, values)

    def min(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.minimum, values)

    def max(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.maximum, values)

    def first_valid(self, col: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Each group's first value that is not null (null if it has none), as Acero's ``first``."""
        col = one_chunk(col)
        if not len(self):
            return col[:0]
        valid = present(col)[self.rows]
        position = np.minimum.reduceat(np.where(valid, np.arange(self.size), self.size), self.starts)
        found = position < np.append(self.starts[1:], self.size)
        return col.take(pa.array(self.rows[np.minimum(position, self.size - 1)], pa.int64(), mask=~found))

    def count_distinct(self, col: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Distinct values of each group, nulls not counted (as Acero's ``count_distinct``)."""
        if not pa.types.is_string(col.type):
            raise TypeError(f"count_distinct of {col.type}: text columns only")
        return self.count_distinct_codes(key_parts(col)[-1])

    def count_distinct_codes(self, codes: np.ndarray) -> np.ndarray:
        """Distinct non-negative integer codes of each group (negative: null, not counted)."""
        code = np.asarray(codes)[self.rows]
        valid = code >= 0
        width = int(code.max(initial=0)) + 1
        pairs = unique(np.repeat(np.arange(len(self)), self.count())[valid] * width + code[valid])  # (group, value)
        return np.bincount(pairs // width, minlength=len(self))

    def _reduce(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if not len(self):
            return values[:0]
        return ufunc.reduceat(values[self.rows], self.starts)


__all__ = ["Groups", "group_by_hash", "grouped", "key_parts", "run_starts", "unique"]
