"""The embedded store: Parquet files partitioned by day, queried with DuckDB.

Layout of the data directory::

    archive/<table>/day=YYYY-MM-DD/part-*.parquet   the append-only tables (flows, proto_*, sensor_stats)
    liaowang.duckdb                                 the tables that change: alerts (triage), sessions,
                                                    nf_inventory; and the write lock

The large append-only tables live only in Parquet: a write is one columnar file
per day touched (written under a temporary name and renamed, so a reader sees
whole files), no second copy in a database.  That is what makes ingest fast.
Queries see them as DuckDB views over the day directories.

DuckDB lets one process write a database file, or several read it, not both at
once.  So nothing holds the file open between operations: a write opens it
(which also serialises writers), appends and closes it; a query opens it
read-only and closes it; either one retries for a while when the other holds
the lock.  An analyst's console can therefore read while a replay appends, and
always sees whole batches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection.rules.compiler import address_halves, in_networks
from ingest.store import archive
from ingest.store.api import (
    GRADES,
    SCHEMAS,
    TABLES,
    TOP_DIMENSIONS,
    Condition,
    Page,
    Query,
    Store,
    StoreError,
    check_group,
    check_incident_state,
    check_status,
    check_top,
    fill_buckets,
    iso_ns,
    ns,
    prepare,
    rows_of,
)
from ingest.store.filecache import MINUTE_NS, FileAggregates, read_parquet_sql

DB_FILE = "liaowang.duckdb"
STATE_DIR = "worker-state"  # streaming workers' checkpoints (ingest/stream/worker.py)
#: flows summed per (src_ip, dst_ip): what assets are computed from (Elasticsearch gets the same rows from a
#: composite aggregation and runs the same SQL over them in memory)
PAIRS_SQL = """SELECT src_ip, dst_ip, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
                      sum(src2dst_bytes) AS src2dst_bytes, sum(dst2src_bytes) AS dst2src_bytes, count(*) AS flows
               FROM flows GROUP BY src_ip, dst_ip"""
ASSETS_SQL = """WITH pairs AS ({pairs}), ends AS (
      SELECT src_ip AS ip, dst_ip AS peer, first_seen, last_seen, src2dst_bytes AS sent, dst2src_bytes AS recv, flows
      FROM pairs WHERE src_ip IS NOT NULL
      UNION ALL
      SELECT dst_ip, src_ip, first_seen, last_seen, dst2src_bytes, src2dst_bytes, flows
      FROM pairs WHERE dst_ip IS NOT NULL)
    SELECT e.ip, make_timestamp_ns(epoch_ns(min(first_seen)) // 1000000 * 1000000) AS first_seen,
           make_timestamp_ns(epoch_ns(max(last_seen)) // 1000000 * 1000000) AS last_seen, sum(flows) AS flows,
           sum(sent) AS bytes_sent, sum(recv) AS bytes_received, count(DISTINCT peer) AS peers,
           (SELECT list(DISTINCT role ORDER BY role) FROM nf_inventory n WHERE n.ip = e.ip) AS roles
    FROM ends e GROUP BY e.ip"""
LOCK_WAIT_S = 30.0
WRITER_WAITING = ".writer-waiting"  # a writer blocked by readers touches this; new readers wait for it
#: tables kept only as Parquet (append-only: alerts change status, sessions and the inventory are replaced)
PARQUET_TABLES = tuple(n for n, spec in TABLES.items() if not spec.replace and n != "alerts")
DAY_NS = 86_400 * 10**9
#: a nanosecond time parameter as a constant of the time columns' type: compared with one, a column's filter is
#: pushed down to the Parquet statistics
TIME_PARAM = "make_timestamp_ns(?)::TIMESTAMPTZ_NS"
#: the rows of one write are split into about two files per thread, written in parallel, of at least this many
#: rows (small files cost queries a footer each)
MIN_FILE_ROWS = 65_536
#: runs of rows of one day in a batch beyond which the batch is sorted by day first (not usual: rows come in
#: about time order)
MAX_DAY_RUNS = 64
_process_lock = threading.Lock()  # one connection per process at a time: DuckDB refuses a second configuration


def _day_number(label: str) -> int:
    """Days since the epoch of a day directory's ``YYYY-MM-DD``."""
    return (dt.date.fromisoformat(label) - dt.date(1970, 1, 1)).days


def _age_s(path: Path) -> float:
    """Seconds since ``path`` was touched; infinite when it is gone (a writer may remove it at any moment)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _in_cidr(values: pa.Array, networks: pa.Array) -> pa.Array:
    """SQL ``liaowang_in_cidr(address, cidr)``: the rules' vectorized CIDR test (DuckDB here has no inet)."""
    nets = networks.unique().drop_null().to_pylist()
    return pa.array(in_networks(values, nets) & np.asarray(values.is_valid()), pa.bool_())


def _ip_key(values: pa.Array) -> pa.Array:
    """SQL ``liaowang_ip_key(address)``: 16 big-endian bytes, so addresses sort by number as in Elasticsearch."""
    hi, lo = address_halves(values)
    raw = np.stack([hi, lo], axis=1).astype(">u8").tobytes()
    keys = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(raw)])
    return pc.if_else(values.is_valid(), keys.cast(pa.binary()), pa.scalar(None, pa.binary()))


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    con.create_function("liaowang_in_cidr", _in_cidr, ["VARCHAR", "VARCHAR"], "BOOLEAN",  # type: ignore[call-overload]
                        type="arrow")
    con.create_function("liaowang_ip_key", _ip_key, ["VARCHAR"], "BLOB", type="arrow")  # type: ignore[call-overload]
    archive.register_functions(con)


def order_by(q: Query) -> str:
    """ORDER BY of a query: its column (addresses by number), then the id ascending."""
    col, desc = q.order()
    key = f'liaowang_ip_key("{col}")' if col in q.spec.ip_columns else f'"{col}"'
    return f'{key} {"DESC" if desc else "ASC"} NULLS LAST, "{q.spec.id_column}" ASC'


class DuckStore(Store):
    def __init__(self, path: Path | str) -> None:
        self.root = Path(path).expanduser()
        if self.root.suffix == ".duckdb":
            self.root = self.root.parent
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: not a directory")
        self.db = self.root / DB_FILE
        self._con: duckdb.DuckDBPyConnection | None = None
        self._view_files: dict[str, list[str]] = {}
        self._file_aggregates = FileAggregates()  # the dashboards' partial sums of the flow files
        self._upgraded = False  # tables made and checked against the schemas (once per process)
        self._read_only = False  # a reader could not take the writer's lock to upgrade: read as it is

    # -- connections --
    def _memory(self) -> duckdb.DuckDBPyConnection:
        """This process's in-memory DuckDB: functions and Parquet views live here; the database file is
        attached only for the length of one operation (opening DuckDB costs ~30 ms, attaching ~1 ms)."""
        if self._con is None:
            self._con = duckdb.connect()
            # footers of the Parquet files kept between queries (files are never rewritten in place)
            self._con.execute("SET parquet_metadata_cache = true")
            register_functions(self._con)
        return self._con

    @contextmanager
    def _connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if not write and not self.db.exists():
            raise StoreError(f"{self.root}: no Liaowang store here (run `liaowang replay ... --store {self.root}`)")
        if not write and not self._upgraded and not self._read_only:
            # a store of an older version gains the columns added since before anyone reads it (a
            # store this process may not write to is read as it is)
            try:
                with self._connect(write=True):
                    pass
            except (StoreError, duckdb.Error, OSError):
                self._read_only = True
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        path = str(self.db).replace("'", "''")
        waiting = self.root / WRITER_WAITING
        with _process_lock:
            con = self._memory()
            if not write:  # let a waiting writer in first: readers that poll would starve it
                while _age_s(waiting) < LOCK_WAIT_S and time.monotonic() < deadline:
                    time.sleep(0.01)
            while True:
                try:
                    con.execute(f"ATTACH '{path}' AS store" + ("" if write else " (READ_ONLY)"))
                    break
                except duckdb.IOException as e:
                    if "lock" not in str(e).lower() or time.monotonic() > deadline:
                        if write:
                            waiting.unlink(missing_ok=True)
                        raise StoreError(f"{self.db}: {e}") from e
                    if write:
                        waiting.touch()
                    time.sleep(0.02)
            if write:
                waiting.unlink(missing_ok=True)
            try:
                con.execute("USE store")
                if write and not self._upgraded:
                    self._create_tables(con)
                    self._upgraded = True
                if not write:  # writes touch only the database's tables
                    self._views(con)
                yield con
            finally:
                con.execute("USE memory")
                con.execute("DETACH store")

    @staticmethod
    def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
        for name, schema in SCHEMAS.items():
            if name in PARQUET_TABLES:
                continue
            con.register("empty_", schema.empty_table())
            con.execute(f'CREATE TABLE IF NOT EXISTS "{name}" AS SELECT * FROM empty_')
            # a store made by an older version: columns added to the schema since (additions only) are added
            have = {r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()}
            for column, kind, *_ in con.execute("DESCRIBE empty_").fetchall():
                if column not in have:
                    con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{column}" {kind}')
            con.unregister("empty_")

    def _days(self, name: str) -> dict[str, list[Path]]:
        """Parquet files of a Parquet table per day (``YYYY-MM-DD``), oldest day first."""
        root = self.root / "archive" / name
        days = {d.name[4:]: sorted(d.glob("*.parquet")) for d in root.glob("day=*")} if root.is_dir() else {}
        return {d: files for d, files in sorted(days.items()) if files}

    def _views(self, con: duckdb.DuckDBPyConnection) -> None:
        """The Parquet tables as views over their files as they are now (a writer renames new files in only
        while it holds the database lock, so these are whole batches)."""
        for name in PARQUET_TABLES:
            files = [str(f) for fs in self._days(name).values() for f in fs]
            if self._view_files.get(name) == files:
                continue  # binding a view reads every file's footer: only when the files changed
            self._view_files[name] = files
            con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {self._select_files(con, name, files)}')

    @staticmethod
    def _select_files(con: duckdb.DuckDBPyConnection, name: str, files: list[str]) -> str:
        """SELECT of a Parquet table's rows in ``files``, every column of its schema (null where a file written
        by an older version lacks one)."""
        con.register(f"empty_{name}", SCHEMAS[name].empty_table())  # the source when there are no files
        source = read_parquet_sql(files, "union_by_name = true") if files else f'"empty_{name}"'
        kinds = {c: kind for c, kind, *_ in con.execute(f'DESCRIBE "empty_{name}"').fetchall()}
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        columns = ", ".join(archive.column_sql(f.name, f.type, have) or f'CAST(NULL AS {kinds[f.name]}) AS "{f.name}"'
                            for f in SCHEMAS[name])
        return f"SELECT {columns} FROM {source}"

    def _source(self, con: duckdb.DuckDBPyConnection, q: Query) -> str:
        """What a query reads: for a Parquet table and a time range, only the files of the days it overlaps
        (rows are partitioned by the day of their time column; every file costs a footer read per query)."""
        if q.table == "assets":
            return f"({ASSETS_SQL.format(pairs=PAIRS_SQL)})"
        if q.table not in PARQUET_TABLES or (q.start is None and q.end is None):
            return f'"{q.table}"'
        start, end = ns(q.start), ns(q.end)
        first = -(2**62) if start is None else start // DAY_NS
        last = 2**62 if end is None else (end - 1) // DAY_NS
        days = self._days(q.table)
        files = [str(f) for day, fs in days.items() if first <= _day_number(day) <= last for f in fs]
        if len(files) == sum(len(fs) for fs in days.values()):
            return f'"{q.table}"'
        return f"({self._select_files(con, q.table, files)})"

    # -- writes --
    def write(self, name: str, table: pa.Table) -> int:
        return self.write_many({name: table})[name]

    def write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        """Every table under one hold of the database (attaching it costs more than a small batch's rows)."""
        prepared = {name: prepare(name, table) for name, table in tables.items()}
        added = dict.fromkeys(tables, 0)
        staged = {name: self._stage_parquet(name, t) for name, t in prepared.items()
                  if name in PARQUET_TABLES and t.num_rows}
        try:
            if any(t.num_rows for t in prepared.values()):
                with self._connect(write=True) as con:
                    for name, table in prepared.items():
                        if name in staged:
                            added[name] = self._commit_parquet(con, name, *staged.pop(name))
                        elif table.num_rows:
                            added[name] = self._insert(con, name, table)
        finally:
            for _, _, written in staged.values():  # not committed (an error): leave no temporary files
                for _, tmp in written:
                    tmp.unlink(missing_ok=True)
        return added

    def _insert(self, con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> int:
        spec = TABLES[name]
        key = spec.id_column
        con.register("batch_", table)
        con.execute("BEGIN")
        # first row of each id in the batch, then only ids not yet stored
        con.execute(f'CREATE OR REPLACE TEMP TABLE new_ AS SELECT * FROM (SELECT * FROM batch_ '
                    f'QUALIFY row_number() OVER (PARTITION BY "{key}") = 1) b')
        if spec.replace:
            for column in spec.analyst_columns:  # what analysts set outlives the snapshot
                con.execute(f'UPDATE new_ SET "{column}" = t."{column}" FROM "{name}" t '
                            f'WHERE new_."{key}" = t."{key}"')
            con.execute(f'DELETE FROM "{name}" WHERE "{key}" IN (SELECT "{key}" FROM new_)')
        else:
            con.execute(f'DELETE FROM new_ WHERE "{key}" IN (SELECT "{key}" FROM "{name}")')
        added = con.execute("SELECT count(*) FROM new_").fetchall()[0][0]
        con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM new_')
        if added and not spec.replace:
            self._archive(con, name, spec.time_column)
        con.execute("COMMIT")
        con.unregister("batch_")
        return int(added)

    def _stage_parquet(self, name: str, table: pa.Table) -> tuple[pa.Table, np.ndarray, list[tuple[str, Path]]]:
        """New rows of a Parquet table as files, one or more per day, under temporary names, written before
        the lock is taken (see :meth:`_commit_parquet`)."""
        spec = TABLES[name]
        day_of_row = np.asarray(table[spec.time_column].cast(pa.int64()).fill_null(0)) // DAY_NS
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            # whether an id repeats within the batch (rare) is learnt by the thread that finishes its files first
            written, distinct = self._write_days(pool, name, table, day_of_row,
                                                 then=lambda: len(pc.unique(table[spec.id_column])))
            if distinct == table.num_rows:
                return table, day_of_row, written
        for _, tmp in written:
            tmp.unlink()
        # first row of each id within the batch
        ids = pa.table({"id": table[spec.id_column], "row": np.arange(table.num_rows, dtype=np.int64)})
        firsts = ids.group_by("id", use_threads=False).aggregate([("row", "min")])["row_min"]
        keep = np.sort(np.asarray(firsts))
        table, day_of_row = table.take(keep), day_of_row[keep]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return table, day_of_row, self._write_days(pool, name, table, day_of_row)[0]

    def _commit_parquet(self, con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, day_of_row: np.ndarray,
                        written: list[tuple[str, Path]]) -> int:
        """Under the lock: rows already stored (a re-delivered batch) are dropped, the files renamed into place."""
        spec = TABLES[name]
        try:
            stored = self._stored_ids(con, name, table, {day for day, _ in written})
            if stored is not None:  # re-delivered rows: write the rest again, under the lock
                fresh = pc.invert(pc.is_in(table[spec.id_column], stored))
                for _, tmp in written:
                    tmp.unlink()
                table, day_of_row = table.filter(fresh), day_of_row[np.asarray(fresh)]
                with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                    written = self._write_days(pool, name, table, day_of_row)[0]
            for _, tmp in written:
                tmp.rename(tmp.with_suffix(""))
            written = []
        finally:
            for _, tmp in written:
                tmp.unlink(missing_ok=True)
        return table.num_rows

    def _write_days(self, pool: ThreadPoolExecutor, name: str, table: pa.Table, day_of_row: np.ndarray,
                    then: Callable[[], int] | None = None) -> tuple[list[tuple[str, Path]], int | None]:
        """``table`` as ``*.parquet.tmp`` files under its days' directories, written in parallel by ``pool``:
        (day, file) of each, and the result of ``then``, run by the pool after the files."""
        if not len(day_of_row):
            return [], then() if then else None
        cuts = np.flatnonzero(np.diff(day_of_row)) + 1
        if len(cuts) > MAX_DAY_RUNS:  # days interleaved row by row: one take, then a slice per day
            order = np.argsort(day_of_row, kind="stable")
            table, day_of_row = table.take(order), day_of_row[order]
            cuts = np.flatnonzero(np.diff(day_of_row)) + 1
        # rows arrive in about time order: each day is a few runs of rows, joined without copying
        starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(day_of_row)]])
        runs: dict[int, list[pa.Table]] = {}
        for start, stop in zip(starts.tolist(), stops.tolist()):
            runs.setdefault(int(day_of_row[start]), []).append(table.slice(start, stop - start))
        spec = TABLES[name]
        stats = [c for c in (spec.time_column, "last_seen") if c in table.column_names]
        # files of about equal size, two per thread, so that no thread is left waiting long for the last one
        file_rows = max(MIN_FILE_ROWS, -(-table.num_rows // (2 * (os.cpu_count() or 1))))
        jobs: list[tuple[pa.Table, Path]] = []
        for day, pieces in sorted(runs.items()):
            part = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
            label = dt.datetime.fromtimestamp(int(day) * 86_400, dt.UTC).strftime("%Y-%m-%d")
            out = self.root / "archive" / name / f"day={label}"
            out.mkdir(parents=True, exist_ok=True)
            step = -(-part.num_rows // max(1, round(part.num_rows / file_rows)))
            jobs += [(part.slice(i, step), out / f"part-{uuid.uuid4().hex}.parquet.tmp")
                     for i in range(0, part.num_rows, step)]
        # statistics only where queries prune files by them (time bounds); the largest files first, so that
        # the threads finish together
        jobs.sort(key=lambda job: -job[0].num_rows)
        filtered = {*spec.ip_columns, *spec.text_columns}
        writes = [pool.submit(archive.write, part, p, stats, filtered) for part, p in jobs]
        after = pool.submit(then) if then else None
        for w in writes:
            w.result()
        return [(p.parent.name[4:], p) for _, p in jobs], after.result() if after else None

    def _stored_ids(self, con: duckdb.DuckDBPyConnection, name: str, table: pa.Table,
                    days: set[str]) -> pa.Array | None:
        """Ids of ``table`` already stored (a row's id fixes its day, so only those days are read); None if none.

        Where the id is made from the row's time (a flow's start, a message's time), only stored rows within
        the batch's time span can repeat it: the Parquet statistics of the time column then leave out every
        earlier file, so a batch is checked against the few files it overlaps rather than its whole day
        (which grows all day long)."""
        spec = TABLES[name]
        key = spec.id_column
        files = [str(f) for day, fs in self._days(name).items() if day in days for f in fs]
        if not files:
            return None
        span, bounds = "", []
        if spec.id_fixes_time and not table[spec.time_column].null_count:
            lo, hi = pc.min_max(table[spec.time_column].cast(pa.int64())).values()
            if lo.is_valid:
                span, bounds = f' WHERE "{spec.time_column}" BETWEEN {TIME_PARAM} AND {TIME_PARAM}', [lo.as_py(), hi.as_py()]
        con.register("batch_ids_", table.select([key]))
        found = con.sql(f'SELECT b."{key}" FROM batch_ids_ b SEMI JOIN (SELECT "{key}" FROM {read_parquet_sql(files)}'
                        f'{span}) s ON b."{key}" = s."{key}"', params=bounds or None).to_arrow_table()[key]
        con.unregister("batch_ids_")
        return found.combine_chunks() if len(found) else None

    def _archive(self, con: duckdb.DuckDBPyConnection, name: str, time_column: str) -> None:
        out = self.root / "archive" / name
        out.mkdir(parents=True, exist_ok=True)
        con.execute(f"""COPY (SELECT *, strftime("{time_column}", '%Y-%m-%d') AS day FROM new_)
                        TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day), APPEND,
                                    FILENAME_PATTERN 'part-{{uuid}}')""")

    def set_alert_status(self, alert_id: str, status: str) -> bool:
        check_status(status)
        with self._connect(write=True) as con:
            found = con.execute("UPDATE alerts SET status = ?, status_changed = now() WHERE alert_id = ? "
                                "RETURNING alert_id", [status, alert_id]).fetchall()
        return bool(found)

    def set_incident_state(self, incident_id: str, state: str) -> bool:
        check_incident_state(state)
        with self._connect(write=True) as con:
            found = con.execute("UPDATE incidents SET state = ? WHERE incident_id = ? RETURNING incident_id",
                                [state, incident_id]).fetchall()
        return bool(found)

    def retain(self, name: str, max_age_days: float | None = None, max_bytes: int | None = None,
               dry_run: bool = False) -> int:
        if name in PARQUET_TABLES:
            return self._retain_days(name, max_age_days, max_bytes, dry_run)
        spec = TABLES[name]
        col = spec.time_column
        dropped = 0
        with self._connect(write=not dry_run) as con:
            cutoff = None
            if max_age_days is not None:
                newest = con.execute(f'SELECT epoch_ns(max("{col}")) FROM "{name}"').fetchall()[0][0]
                if newest is not None:
                    cutoff = int(newest - max_age_days * 86400e9)
                    old = f'FROM "{name}" WHERE epoch_ns("{col}") < ?'
                    dropped += con.execute(f"SELECT count(*) {old}", [cutoff]).fetchall()[0][0] if dry_run else len(
                        con.execute(f"DELETE {old} RETURNING 1", [cutoff]).fetchall())
            if max_bytes is not None:
                after = f'WHERE epoch_ns("{col}") >= {cutoff}' if dry_run and cutoff is not None else ""
                days = con.execute(f"""SELECT strftime("{col}", '%Y-%m-%d') d, count(*) FROM "{name}" {after}
                                       GROUP BY d ORDER BY d""").fetchall()
                total = sum(c for _, c in days)
                size = self._table_bytes(con, name, total if dry_run else None)
                per_row = size / total if total else 0
                while days and size > max_bytes:
                    d, c = days.pop(0)
                    if not dry_run:
                        con.execute(f"""DELETE FROM "{name}" WHERE strftime("{col}", '%Y-%m-%d') = ?""", [d])
                    dropped += c
                    size -= c * per_row
            if dry_run:
                return int(dropped)
            kept = {r[0] for r in con.execute(f"""SELECT DISTINCT strftime("{col}", '%Y-%m-%d') FROM "{name}" """
                                              ).fetchall()}
            con.execute("CHECKPOINT")
        archive = self.root / "archive" / name
        if archive.is_dir():
            for part in archive.glob("day=*"):
                if part.name[4:] not in kept:
                    shutil.rmtree(part)
        return dropped

    def _retain_days(self, name: str, max_age_days: float | None, max_bytes: int | None, dry_run: bool) -> int:
        """Whole days of a Parquet table, as Elasticsearch drops whole daily indices."""
        with self._connect(write=not dry_run):  # holding the lock: no writer renames files in meanwhile
            days = self._days(name)
            drop: list[str] = []
            if max_age_days is not None and days:
                newest = dt.date.fromisoformat(max(days))
                drop += [d for d in days if (newest - dt.date.fromisoformat(d)).days > max_age_days]
            if max_bytes is not None:
                left = [d for d in days if d not in drop]
                size = sum(f.stat().st_size for d in left for f in days[d])
                while left and size > max_bytes:
                    day = left.pop(0)
                    drop.append(day)
                    size -= sum(f.stat().st_size for f in days[day])
            dropped = sum(pq.read_metadata(f).num_rows for d in drop for f in days[d])
            for d in drop if not dry_run else []:
                shutil.rmtree(self.root / "archive" / name / f"day={d}")
        return dropped

    @staticmethod
    def _table_bytes(con: duckdb.DuckDBPyConnection, name: str, rows_of_name: int | None = None) -> int:
        """Estimated bytes of a table: its share of the database's used blocks, by row count (``rows_of_name``:
        as if it had that many rows)."""
        info = con.execute("PRAGMA database_size").fetchall()[0]
        used = int(info[2]) * int(info[4]) if info else 0  # block_size * used_blocks
        rows = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in SCHEMAS
                if t not in PARQUET_TABLES}
        widths = {t: len(SCHEMAS[t]) for t in SCHEMAS}
        weight = sum(rows[t] * widths[t] for t in rows) or 1
        return int(used * (rows[name] if rows_of_name is None else rows_of_name) * widths[name] / weight)

    # -- worker checkpoints: one file per key, replaced atomically --
    def _state_path(self, key: str) -> Path:
        return self.root / STATE_DIR / (hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".bin")

    def put_state(self, key: str, data: bytes) -> None:
        path = self._state_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get_state(self, key: str) -> bytes | None:
        try:
            return self._state_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        with _process_lock:  # the database file is never held open between operations; this is memory only
            if self._con is not None:
                self._con.close()
                self._con = None
                self._view_files.clear()

    # -- queries --
    def search(self, q: Query) -> Page:
        where, params = self._where(q)
        order = order_by(q)
        schema = q.schema
        columns = ", ".join(f'"{c}"' for c in schema.names)
        with self._connect(write=False) as con:
            source = self._source(con, q)
            total = con.execute(f"SELECT count(*) FROM {source} t WHERE {where}", params).fetchall()[0][0]
            table = con.sql(f"SELECT {columns} FROM {source} t WHERE {where} ORDER BY {order} "
                            f"LIMIT {int(q.limit)} OFFSET {int(q.offset)}", params=params).to_arrow_table()
        return Page(rows_of(table.cast(schema)), int(total))

    @staticmethod
    def _where(q: Query) -> tuple[str, list[Any]]:
        parts, params = ["TRUE"], []
        for c in q.where:
            sql, p = _condition(c)
            parts.append(sql)
            params += p
        if q.ip:
            ors = []
            for col in q.spec.ip_columns:
                sql, p = _condition(Condition(col, "cidr", q.ip))
                ors.append(sql)
                params += p
            parts.append("(" + " OR ".join(ors) + ")")
        if q.text and q.spec.text_columns:
            parts.append("(" + " OR ".join(f'"{c}" ILIKE ?' for c in q.spec.text_columns) + ")")
            params += [f"%{q.text}%"] * len(q.spec.text_columns)
        for bound, op in ((q.start, ">="), (q.end, "<")):
            if bound is not None:
                bound_sql = "make_timestamp_ns(?)" if q.table == "assets" else TIME_PARAM
                parts.append(f't."{q.spec.time_column}" {op} {bound_sql}')
                params.append(ns(bound))
        return " AND ".join(parts), params

    def histogram(self, start: dt.datetime | None, end: dt.datetime | None, bucket_s: int) -> list[dict[str, Any]]:
        width = int(bucket_s) * 1_000_000_000
        out: dict[int, dict[str, Any]] = {}
        with self._connect(write=False) as con:
            bucket = f"epoch_ns(first_seen) // {width} * {width}"
            if width % MINUTE_NS:  # buckets not made of whole minutes: every row
                where, params = self._where(Query("flows", start=start, end=end))
                sql, params = (f"SELECT {bucket} AS key, count(*) AS flows, sum(bidirectional_packets) AS packets, "
                               f"sum(bidirectional_bytes) AS bytes FROM flows t WHERE {where} GROUP BY key"), params
            else:
                sql, params = self._flow_sums(con, None, bucket, f"minute * {MINUTE_NS} // {width} * {width}",
                                              start, end)
            for b, flows, packets, size in con.execute(sql, params).fetchall():
                out.setdefault(int(b), {}).update(flows=int(flows), packets=int(packets or 0), bytes=int(size or 0))
            where, params = self._where(Query("alerts", start=start, end=end))
            for b, level, count in con.execute(
                    f"""SELECT epoch_ns(first_seen) // {width} * {width} AS bucket, level, count(*)
                        FROM alerts t WHERE {where} GROUP BY bucket, level""", params).fetchall():
                row = out.setdefault(int(b), {})
                row["alerts"] = row.get("alerts", 0) + int(count)
                if level in GRADES:
                    row[f"alerts_{level}"] = int(count)
        return fill_buckets(out, width)

    def extent(self, name: str) -> tuple[str | None, str | None]:
        col = TABLES[name].time_column
        with self._connect(write=False) as con:
            lo, hi = con.execute(f'SELECT epoch_ns(min("{col}")), epoch_ns(max("{col}")) FROM "{name}"').fetchall()[0]
        return (None, None) if lo is None else (iso_ns(lo), iso_ns(hi))

    def group(self, q: Query, by: tuple[str, ...], n: int = 10) -> list[dict[str, Any]]:
        check_group(q, by)
        where, params = self._where(q)
        cols = ", ".join(f't."{c}"' for c in by)
        order = ", ".join(f't."{c}" ASC NULLS LAST' for c in by)
        with self._connect(write=False) as con:
            rows = con.execute(f"SELECT {cols}, count(*) AS n FROM \"{q.table}\" t WHERE {where} GROUP BY {cols} "
                               f"ORDER BY n DESC, {order} LIMIT {int(n)}", params).fetchall()
        return [{**dict(zip(by, r[:-1])), "count": int(r[-1])} for r in rows]

    def top(self, by: str, metric: str, start: dt.datetime | None, end: dt.datetime | None,
            n: int = 10) -> list[dict[str, Any]]:
        check_top(by, metric)
        dim = TOP_DIMENSIONS[by]
        # ties in the order Elasticsearch gives them: addresses by number, not as text
        tie = "liaowang_ip_key(key)" if dim in TABLES["flows"].ip_columns else "key"
        with self._connect(write=False) as con:
            sums, params = self._flow_sums(con, dim, f'"{dim}"', "key", start, end)
            rows = con.execute(f"SELECT * FROM ({sums}) ORDER BY {metric} DESC, {tie} ASC LIMIT {int(n)}",
                               params).fetchall()
        return [{dim: k, "flows": int(f), "packets": int(p or 0), "bytes": int(b or 0)} for k, f, p, b in rows]

    def warm(self) -> None:
        """The flow files' partial sums for the histogram and every top list, one at a time (a query waits
        for at most one of them)."""
        for dimension in (None, *TOP_DIMENSIONS.values()):
            with self._connect(write=False) as con:
                self._file_aggregates.parts(con, self._view_files.get("flows", []), dimension)

    def _flow_sums(self, con: duckdb.DuckDBPyConnection, dimension: str | None, row_key: str, part_key: str,
                   start: dt.datetime | None, end: dt.datetime | None) -> tuple[str, list[Any]]:
        """SQL for flows, packets and bytes per key of the flows in [start, end): the kept partial sums of the
        files wholly inside the range (``part_key`` over their ``minute``, or ``key`` = the dimension's value)
        and a scan of the files at its edges (``row_key`` over their rows)."""
        files = self._view_files.get("flows", [])
        self._file_aggregates.forget(set(files))
        inside, edges = self._file_aggregates.split(files, ns(start), ns(end))
        parts, unread = self._file_aggregates.parts(con, inside, dimension)
        edges += unread
        selects: list[str] = []
        params: list[Any] = []
        if parts is not None:
            con.register("flow_parts_", parts)
            selects.append(f"SELECT {part_key} AS key, flows, packets, bytes FROM flow_parts_")
        if edges:
            where, params = self._where(Query("flows", start=start, end=end))
            present = "" if dimension is None else f' AND {row_key} IS NOT NULL'
            selects.append(f"SELECT {row_key} AS key, 1 AS flows, bidirectional_packets AS packets, "
                           f"bidirectional_bytes AS bytes FROM {read_parquet_sql(edges, 'union_by_name = true')} t "
                           f"WHERE {where}{present}")
        if not selects:
            return ("SELECT NULL AS key, 0 AS flows, 0 AS packets, 0 AS bytes WHERE FALSE", [])
        union = " UNION ALL ".join(selects)
        return (f"SELECT key, sum(flows) AS flows, sum(packets) AS packets, sum(bytes) AS bytes FROM ({union}) "
                f"GROUP BY key", params)


def _condition(c: Condition) -> tuple[str, list[Any]]:
    col = f't."{c.field}"'
    if c.op == "cidr":
        net = ipaddress.ip_network(str(c.value), strict=False)
        if net.num_addresses == 1:
            return f"{col} = ?", [str(net.network_address)]
        return f"liaowang_in_cidr({col}, ?)", [str(net)]
    if c.op == "in":
        values = list(c.value)
        return (f"{col} IN ({', '.join('?' * len(values))})" if values else "FALSE"), values
    if c.op == "contains":
        return f"{col} ILIKE ?", [f"%{c.value}%"]
    if c.op == "prefix":
        return f"starts_with({col}, ?)", [str(c.value)]
    if c.op == "has":
        return f"list_contains({col}, ?)", [c.value]
    sql = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    return f"{col} {sql} ?", [c.value]
