"""Partial aggregates of the flows table's Parquet files, one file at a time, for the dashboards.

A flows file is written once and never changed (retention deletes whole
days), so what the console's histogram and top lists need from it (flows,
packets and bytes per minute, and per value of a top dimension) can be
computed once, on first use, and kept.  A query then sums the kept parts of
the files that lie wholly inside its time range (by the files' first_seen
statistics) and scans only the files at its edges: the answers are those of a
scan of every row, and a dashboard over a week of 10M flows reads a few
thousand rows instead.  Like Elasticsearch's request cache, it lives in the
process that queries (the console), bounded in rows.
"""

from __future__ import annotations

import collections
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MINUTE_NS = 60 * 10**9
#: partial rows kept at most; the least recently used files' parts go first
MAX_ROWS = 2_000_000  # ~80 MB


class FileAggregates:
    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._ranges: dict[str, tuple[int, int] | None] = {}
        self._parts: collections.OrderedDict[tuple[str, str], pa.Table] = collections.OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def split(self, files: list[str], start_ns: int | None, end_ns: int | None) -> tuple[list[str], list[str]]:
        """(files wholly inside [start, end), files that may hold rows on both sides); files wholly outside
        are left out.  A file without first_seen statistics is an edge file."""
        inside, edges = [], []
        for f in files:
            r = self._range(f)
            if r is not None and ((start_ns is not None and r[1] < start_ns) or (end_ns is not None and r[0] >= end_ns)):
                continue
            if r is not None and (start_ns is None or r[0] >= start_ns) and (end_ns is None or r[1] < end_ns):
                inside.append(f)
            else:
                edges.append(f)
        return inside, edges

    def parts(self, con: duckdb.DuckDBPyConnection, files: list[str], dimension: str | None
              ) -> tuple[pa.Table | None, list[str]]:
        """The files' partial aggregates (None: no file) per minute of first_seen (``dimension`` None) or
        per value of ``dimension`` (non-null, ``key``); and the files that could not be read so (e.g.
        written before the column existed): scan those."""
        kind = dimension or "minute"
        tables, missing, unread = [], [], []
        for f in files:
            with self._lock:
                got = self._parts.get((f, kind))
                if got is not None:
                    self._parts.move_to_end((f, kind))
                    tables.append(got)
                else:
                    missing.append(f)
        if missing:
            try:  # one scan of all the files not read yet (DuckDB reads them in parallel), split by file
                found = con.sql(_part_sql(missing, dimension)).to_arrow_table()
            except duckdb.Error:  # some file lacks a column: find which, one by one
                found = None
            if found is not None:
                found = found.sort_by("file")
                names, first, counts = np.unique(found["file"].to_numpy(zero_copy_only=False), return_index=True,
                                                 return_counts=True)
                at = {str(f): (int(i), int(c)) for f, i, c in zip(names, first, counts)}
                if not set(at) <= set(missing):  # DuckDB named the files otherwise: read them one by one
                    found = None
            if found is not None:
                for f in missing:
                    lo, count = at.get(f, (0, 0))  # (0, 0): a file without rows (none passed the filter)
                    got = found.slice(lo, count).drop_columns(["file"])
                    self._keep((f, kind), got)
                    tables.append(got)
            else:
                for f in missing:
                    try:
                        got = con.sql(_part_sql([f], dimension)).to_arrow_table().drop_columns(["file"])
                    except duckdb.Error:
                        unread.append(f)
                        continue
                    self._keep((f, kind), got)
                    tables.append(got)
        if not tables:
            return None, unread
        return pa.concat_tables(tables, promote_options="permissive"), unread

    def forget(self, keep: set[str]) -> None:
        """Drop what is kept of files no longer in the table (retention removed them)."""
        with self._lock:
            for key in [k for k in self._parts if k[0] not in keep]:
                self._rows -= self._parts.pop(key).num_rows
            for f in [f for f in self._ranges if f not in keep]:
                del self._ranges[f]

    def _keep(self, key: tuple[str, str], table: pa.Table) -> None:
        with self._lock:
            if key in self._parts:
                return
            self._parts[key] = table
            self._rows += table.num_rows
            while self._rows > self.max_rows and len(self._parts) > 1:
                self._rows -= self._parts.popitem(last=False)[1].num_rows

    def _range(self, path: str) -> tuple[int, int] | None:
        if path not in self._ranges:
            self._ranges[path] = _first_seen_range(path)
        return self._ranges[path]


def _first_seen_range(path: str) -> tuple[int, int] | None:
    """(min, max) first_seen of a file in ns, from its row groups' statistics; None when any lacks them."""
    meta = pq.read_metadata(path)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if "first_seen" not in names:
        return None
    i = names.index("first_seen")
    lo: int | None = None
    hi: int | None = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(i).statistics
        if stats is None or not stats.has_min_max:
            return None
        a, b = int(stats.min_raw), int(stats.max_raw)
        lo, hi = a if lo is None else min(lo, a), b if hi is None else max(hi, b)
    return None if lo is None or hi is None else (lo, hi)


def read_parquet_sql(paths: list[str], options: str = "") -> str:
    """DuckDB's ``read_parquet`` of these files (quoted as SQL strings), with ``options`` (e.g. ``filename = true``)."""
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{listed}]{', ' + options if options else ''})"


def _part_sql(paths: list[str], dimension: str | None) -> str:
    source = read_parquet_sql(paths, "filename = true")
    sums = "count(*) AS flows, sum(bidirectional_packets) AS packets, sum(bidirectional_bytes) AS bytes"
    if dimension is None:
        return (f"SELECT filename AS file, epoch_ns(first_seen) // {MINUTE_NS} AS minute, {sums} FROM {source} "
                "GROUP BY file, minute")
    return (f'SELECT filename AS file, "{dimension}" AS key, {sums} FROM {source} WHERE "{dimension}" IS NOT NULL '
            "GROUP BY file, key")


__all__ = ["MINUTE_NS", "FileAggregates", "read_parquet_sql"]
