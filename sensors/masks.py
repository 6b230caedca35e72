"""Arrow validity and boolean bitmaps as numpy masks, read straight from the arrays' buffers.

pyarrow's way (``is_valid()`` or ``fill_null(False)``, then ``to_numpy``) runs a
compute kernel and builds an Arrow array first, several times slower on the
decoders' and the rules' paths, which ask for these masks many times per batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def one_chunk(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The array itself, or a chunked array's one chunk (without a copy), or its chunks joined."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def present(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which values are not null (bool, one per value)."""
    arr = one_chunk(arr)
    if not arr.null_count:
        return np.ones(len(arr), dtype=bool)
    return _bits(arr.buffers()[0], arr)


def true_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean column as a mask: True where the value is true (null counts as false)."""
    arr = one_chunk(arr)
    values = _bits(arr.buffers()[1], arr)
    return values & _bits(arr.buffers()[0], arr) if arr.null_count else values


def _bits(buf: pa.Buffer | None, arr: pa.Array) -> np.ndarray:
    """An Arrow bitmap of ``arr`` (its offset applied) as numpy bools."""
    if not len(arr) or buf is None:  # pyarrow leaves out the value bitmap of an all-null array
        return np.zeros(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little", count=arr.offset + len(arr))
    mask: np.ndarray = bits[arr.offset:].view(bool)
    return mask


__all__ = ["one_chunk", "present", "true_mask"]
