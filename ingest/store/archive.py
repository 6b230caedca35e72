"""How the embedded store lays its tables out in Parquet files, and how DuckDB reads them back.

Writing Parquet is what ingest spends its time on, so each batch is written
the cheapest way that keeps files small and the columns' types intact:

* Lists of numbers (a flow's ``splt_*``) are written as one binary value per
  row, the items' little-endian bytes, in a column named ``<name>__packed``.
  Parquet's own lists cost repetition and definition levels per item: about a
  fifth of all the writing for the flows table.  The views unpack them
  (:func:`column_sql`), so every query still sees the list; files written
  before this have the list column itself and read as before.
* A column with no null in the batch is written as required (no definition
  levels).
* Dictionary encoding only where values repeat, or where queries filter (the
  addresses and names a hunt matches): a column whose first rows are mostly
  distinct (ids, times, measured durations) falls back from a dictionary
  anyway, after paying to build one per file.  Times among them are
  delta-encoded: rows come in about time order.
* LZ4, not zstd: files ~18% larger, written ~20% faster and scanned by the
  dashboards' queries 20-40% faster.  Not at all where it saves less than
  40% of a sample of the column (measured values, hashes, delta-encoded times):
  compressing those took a fifth of the writing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensors.masks import one_chunk

PACKED_SUFFIX = "__packed"
#: rows of a batch looked at to decide whether a column's values repeat
SAMPLE_ROWS = 4096
#: distinct values per sampled row above which a column is written without a dictionary
DISTINCT_RATIO = 0.5
#: size after LZ4 over size before, of a plain column's sample, above which the column is left uncompressed
COMPRESSED_RATIO = 0.6
#: item types a list column may be packed from, with DuckDB's names for them
ITEM_TYPES = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
              pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER", pa.uint64(): "UBIGINT",
              pa.float32(): "FLOAT", pa.float64(): "DOUBLE"}


def packable(t: pa.DataType) -> bool:
    return pa.types.is_list(t) and t.value_type in ITEM_TYPES


def pack(column: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """A list column as binary values of its items' bytes; None when an item is null (kept as a list then)."""
    col = one_chunk(column)
    items = col.values
    if items.null_count:
        return None
    width = items.type.byte_width
    offsets = np.asarray(col.offsets, dtype=np.int64)
    start, stop = (items.offset + offsets[0]) * width, (items.offset + offsets[-1]) * width
    data = items.buffers()[1][start:stop] if stop > start else pa.py_buffer(b"")
    packed = pa.BinaryArray.from_buffers(pa.binary(), len(col), [
        None, pa.py_buffer(((offsets - offsets[0]) * width).astype(np.int32)), data])
    return pc.if_else(col.is_valid(), packed, pa.scalar(None, pa.binary())) if col.null_count else packed


def unpack(item_type: pa.DataType) -> Callable[[pa.Array | pa.ChunkedArray], pa.Array]:
    """The inverse of :func:`pack` for one item type, as a DuckDB Arrow function."""
    width = item_type.byte_width

    def unpacked(column: pa.Array | pa.ChunkedArray) -> pa.Array:
        col = one_chunk(column)
        if not len(col):
            return pa.array([], pa.list_(item_type))
        offsets = np.frombuffer(col.buffers()[1], np.int32, len(col) + 1, col.offset * 4)
        first, count = int(offsets[0]), int(offsets[-1] - offsets[0])
        data = col.buffers()[2] if count else pa.py_buffer(b"")
        items = pa.Array.from_buffers(item_type, count // width, [None, data], offset=first // width)
        return pa.ListArray.from_arrays(pa.array((offsets - first) // width, pa.int32()), items,
                                        mask=pc.is_null(col) if col.null_count else None)

    return unpacked


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """``liaowang_unpack_<type>(blob)`` for every packable item type."""
    for item_type, sql_type in ITEM_TYPES.items():
        con.create_function(f"liaowang_unpack_{item_type}", unpack(item_type),  # type: ignore[call-overload]
                            ["BLOB"], f"{sql_type}[]", type="arrow")


def column_sql(name: str, t: pa.DataType, have: set[str]) -> str | None:
    """SQL for column ``name`` of type ``t`` over files whose columns are ``have``; None when none has it."""
    packed = name + PACKED_SUFFIX
    parts = [f'liaowang_unpack_{t.value_type}("{packed}")'] if packable(t) and packed in have else []
    parts += [f'"{name}"'] if name in have else []
    if not parts:
        return None
    return (parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})") + f' AS "{name}"'


def write(table: pa.Table, path: Path, statistics: Collection[str], filtered: Collection[str] = ()) -> None:
    """``table`` as a Parquet file, laid out as this module describes, with min/max only for ``statistics``;
    ``filtered``: columns queries filter by, kept in dictionaries whatever their values (DuckDB then tests a
    filter once per distinct value)."""
    fields, columns, dictionary, compressed, delta = [], [], [], [], []
    for f, column in zip(table.schema, table.columns):
        name = f.name
        if packable(f.type) and (packed := pack(column)) is not None:
            name, column = name + PACKED_SUFFIX, packed
        sample = column.slice(0, SAMPLE_ROWS)
        if name in filtered or pa.types.is_nested(column.type) or \
                pc.count_distinct(sample).as_py() <= DISTINCT_RATIO * len(sample):
            dictionary.append(name)
            compressed.append(name)
        elif pa.types.is_timestamp(column.type):
            delta.append(name)
        elif _compresses(sample):
            compressed.append(name)
        fields.append(pa.field(name, column.type, nullable=column.null_count > 0))
        columns.append(column)
    pq.write_table(pa.Table.from_arrays(columns, schema=pa.schema(fields)), path,
                   write_statistics=statistics, use_dictionary=dictionary,
                   compression={f.name: "lz4" if f.name in compressed else "none" for f in fields},
                   column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"))


def _compresses(sample: pa.Array | pa.ChunkedArray) -> bool:
    """Whether LZ4 makes a plain column's values (a sample of them) markedly smaller."""
    # a copy of the sample's values alone: a slice shares its column's whole buffer
    values = pa.concat_arrays([one_chunk(sample)]).buffers()[-1]
    return values is not None and values.size > 0 and \
        len(pa.compress(values, "lz4", asbytes=True)) < COMPRESSED_RATIO * values.size


__all__ = ["PACKED_SUFFIX", "column_sql", "pack", "packable", "register_functions", "unpack", "write"]
