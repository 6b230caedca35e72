"""The embedded store: a DuckDB database for queries and a Parquet archive partitioned by day.

Layout of the data directory::

    liaowang.duckdb                          tables: flows, alerts, sessions, nf_inventory, sensor_stats, proto_*
    archive/<table>/day=YYYY-MM-DD/*.parquet  every row as first stored (append tables), zstd

DuckDB lets one process write a database file, or several read it, not both at
once.  So nothing holds the file open between operations: a write opens it,
appends inside one transaction and closes it; a query opens it read-only and
closes it; either one retries for a while when the other holds the lock.  An
analyst's console can therefore read while a replay appends, and always sees
whole batches.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.rules.compiler import address_halves, in_networks
from ingest.store.api import (
    ASSET_SCHEMA,
    SCHEMAS,
    TABLES,
    TOP_DIMENSIONS,
    Condition,
    Page,
    Query,
    Store,
    StoreError,
    check_status,
    check_top,
    fill_buckets,
    ns,
    prepare,
    rows_of,
)

DB_FILE = "liaowang.duckdb"
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
_process_lock = threading.Lock()  # one connection per process at a time: DuckDB refuses a second configuration


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

    # -- connections --
    @contextmanager
    def _connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if not write and not self.db.exists():
            raise StoreError(f"{self.root}: no Liaowang store here (run `liaowang replay ... --store {self.root}`)")
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        with _process_lock:
            while True:
                try:
                    con = duckdb.connect(str(self.db), read_only=not write)
                    break
                except duckdb.IOException as e:
                    if "lock" not in str(e).lower() or time.monotonic() > deadline:
                        raise StoreError(f"{self.db}: {e}") from e
                    time.sleep(0.02)
            try:
                register_functions(con)
                if write:
                    self._create_tables(con)
                yield con
            finally:
                con.close()

    @staticmethod
    def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
        for name, schema in SCHEMAS.items():
            con.register("empty_", schema.empty_table())
            con.execute(f'CREATE TABLE IF NOT EXISTS "{name}" AS SELECT * FROM empty_')
            con.unregister("empty_")

    # -- writes --
    def write(self, name: str, table: pa.Table) -> int:
        table = prepare(name, table)
        if not table.num_rows:
            return 0
        spec = TABLES[name]
        key = spec.id_column
        with self._connect(write=True) as con:
            con.register("batch_", table)
            con.execute("BEGIN")
            # first row of each id in the batch, then only ids not yet stored
            con.execute(f'CREATE OR REPLACE TEMP TABLE new_ AS SELECT * FROM (SELECT * FROM batch_ '
                        f'QUALIFY row_number() OVER (PARTITION BY "{key}") = 1) b')
            if spec.replace:
                con.execute(f'DELETE FROM "{name}" WHERE "{key}" IN (SELECT "{key}" FROM new_)')
            else:
                con.execute(f'DELETE FROM new_ WHERE "{key}" IN (SELECT "{key}" FROM "{name}")')
            added = con.execute("SELECT count(*) FROM new_").fetchall()[0][0]
            con.execute(f'INSERT INTO "{name}" SELECT * FROM new_')
            if added and not spec.replace:
                self._archive(con, name, spec.time_column)
            con.execute("COMMIT")
            con.unregister("batch_")
        return int(added)

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

    def retain(self, name: str, max_age_days: float | None = None, max_bytes: int | None = None) -> int:
        spec = TABLES[name]
        col = spec.time_column
        dropped = 0
        with self._connect(write=True) as con:
            if max_age_days is not None:
                newest = con.execute(f'SELECT epoch_ns(max("{col}")) FROM "{name}"').fetchall()[0][0]
                if newest is not None:
                    cutoff = int(newest - max_age_days * 86400e9)
                    dropped += len(con.execute(f'DELETE FROM "{name}" WHERE epoch_ns("{col}") < ? RETURNING 1',
                                               [cutoff]).fetchall())
            if max_bytes is not None:
                days = con.execute(f"""SELECT strftime("{col}", '%Y-%m-%d') d, count(*) FROM "{name}"
                                       GROUP BY d ORDER BY d""").fetchall()
                total = sum(c for _, c in days)
                size = self._table_bytes(con, name)
                per_row = size / total if total else 0
                while days and size > max_bytes:
                    d, c = days.pop(0)
                    con.execute(f"""DELETE FROM "{name}" WHERE strftime("{col}", '%Y-%m-%d') = ?""", [d])
                    dropped += c
                    size -= c * per_row
            kept = {r[0] for r in con.execute(f"""SELECT DISTINCT strftime("{col}", '%Y-%m-%d') FROM "{name}" """
                                              ).fetchall()}
            con.execute("CHECKPOINT")
        archive = self.root / "archive" / name
        if archive.is_dir():
            for part in archive.glob("day=*"):
                if part.name[4:] not in kept:
                    shutil.rmtree(part)
        return dropped

    @staticmethod
    def _table_bytes(con: duckdb.DuckDBPyConnection, name: str) -> int:
        """Estimated bytes of a table: its share of the database's used blocks, by row count."""
        info = con.execute("PRAGMA database_size").fetchall()[0]
        used = int(info[2]) * int(info[4]) if info else 0  # block_size * used_blocks
        rows = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in SCHEMAS}
        widths = {t: len(SCHEMAS[t]) for t in SCHEMAS}
        weight = sum(rows[t] * widths[t] for t in rows) or 1
        return int(used * rows[name] * widths[name] / weight)

    def close(self) -> None:
        pass  # nothing is held open between operations

    # -- queries --
    def search(self, q: Query) -> Page:
        where, params = self._where(q)
        order = order_by(q)
        source = f"({ASSETS_SQL.format(pairs=PAIRS_SQL)})" if q.table == "assets" else f'"{q.table}"'
        with self._connect(write=False) as con:
            total = con.execute(f"SELECT count(*) FROM {source} t WHERE {where}", params).fetchall()[0][0]
            table = con.sql(f"SELECT * FROM {source} t WHERE {where} ORDER BY {order} LIMIT {int(q.limit)} "
                            f"OFFSET {int(q.offset)}", params=params).to_arrow_table()
        schema = ASSET_SCHEMA if q.table == "assets" else SCHEMAS[q.table]
        return Page(rows_of(table.select(schema.names).cast(schema)), int(total))

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
                parts.append(f'epoch_ns("{q.spec.time_column}") {op} ?')
                params.append(ns(bound))
        return " AND ".join(parts), params

    def histogram(self, start: dt.datetime | None, end: dt.datetime | None, bucket_s: int) -> list[dict[str, Any]]:
        width = int(bucket_s) * 1_000_000_000
        out: dict[int, dict[str, Any]] = {}
        with self._connect(write=False) as con:
            for table, metrics in (("flows", "count(*) AS flows, sum(bidirectional_packets) AS packets, "
                                             "sum(bidirectional_bytes) AS bytes"),
                                   ("alerts", "count(*) AS alerts")):
                where, params = self._where(Query(table, start=start, end=end))
                for row in con.execute(f"""SELECT epoch_ns(first_seen) // {width} * {width} AS bucket, {metrics}
                                           FROM "{table}" t WHERE {where} GROUP BY bucket""", params).fetchall():
                    b = out.setdefault(int(row[0]), {})
                    names = ["flows", "packets", "bytes"] if table == "flows" else ["alerts"]
                    b.update({k: int(v or 0) for k, v in zip(names, row[1:])})
        return fill_buckets(out, width)

    def top(self, by: str, metric: str, start: dt.datetime | None, end: dt.datetime | None,
            n: int = 10) -> list[dict[str, Any]]:
        check_top(by, metric)
        dim = TOP_DIMENSIONS[by]
        where, params = self._where(Query("flows", start=start, end=end))
        with self._connect(write=False) as con:
            rows = con.execute(f"""SELECT "{dim}" AS key, count(*) AS flows, sum(bidirectional_packets) AS packets,
                                          sum(bidirectional_bytes) AS bytes
                                   FROM flows t WHERE {where} AND "{dim}" IS NOT NULL GROUP BY key
                                   ORDER BY {metric} DESC, key ASC LIMIT {int(n)}""", params).fetchall()
        return [{dim: k, "flows": int(f), "packets": int(p or 0), "bytes": int(b or 0)} for k, f, p, b in rows]


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
    sql = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    return f"{col} {sql} ?", [c.value]
