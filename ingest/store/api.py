"""The store interface: what the console and ``liaowang query`` ask, the same on every backend.

Two backends implement :class:`Store`: DuckDB + Parquet (embedded default,
``ingest/store/duck.py``) and Elasticsearch (``ingest/store/elastic.py``).
Both get the same Arrow tables from :func:`prepare` and answer the same
:class:`Query` with the same rows, which ``tests/test_store.py`` checks by
loading one replay into both.

Writes are idempotent: every row has a deterministic id (:data:`TABLES`), and a
row whose id is already stored is skipped (alerts keep their triage status), so
re-delivered batches and re-run replays never duplicate anything.  Sessions and
the NF inventory are snapshots: a newer row replaces the stored one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from detection.alerts import ALERT_SCHEMA
from detection.flows.schema import FLOW_SCHEMA
from detection.incidents import INCIDENT_SCHEMA
from detection.incidents import STATES as INCIDENT_STATES
from detection.intel import FEED_STATUS_SCHEMA
from detection.inventory import INVENTORY_SCHEMA
from detection.posture import POSTURE_CHANGE_SCHEMA, POSTURE_SCHEMA
from detection.sessions import SESSION_SCHEMA
from detection.trend import TREND_SCHEMA, TREND_WARNING_SCHEMA
from ingest.notify.notifier import NOTIFICATION_SCHEMA
from ingest.notify.settings import NOTIFY_ROUTE_SCHEMA
from sensors.schema import PROTO_SCHEMAS, Field, arrow_schema


class StoreError(Exception):
    """A store that cannot be opened or written: one clear message for the CLI."""


@dataclass(frozen=True)
class TableSpec:
    id_column: str  # deterministic row id
    time_column: str  # what time filters, retention and day partitions use
    replace: bool = False  # snapshots: a newer row with the same id replaces the stored one
    ip_columns: tuple[str, ...] = ()  # what an ``ip`` filter (address or CIDR) matches
    text_columns: tuple[str, ...] = ()  # what a ``text`` filter searches (case-insensitive substring)
    analyst_columns: tuple[str, ...] = ()  # set by analysts: a newer row replacing a stored one keeps them
    id_fixes_time: bool = False  # the id is made from the time column's value: a stored duplicate has the same time


ALERT_STATUSES = ("new", "acknowledged", "investigating", "resolved", "false_positive")
STORE_ALERT_FIELDS = [
    Field("status", pa.string(), "triage status: " + ", ".join(ALERT_STATUSES) + " (store only; starts as new)"),
    Field("status_changed", pa.timestamp("ns", tz="UTC"), "when the status last changed (store only)"),
]
SENSOR_STATS_FIELDS = [
    Field("stats_id", pa.string(), "deterministic: hash of sensor, file and batch start"),
    Field("ts", pa.timestamp("ns", tz="UTC"), "time of the batch's last packet"),
    Field("first_ts", pa.timestamp("ns", tz="UTC"), "time of the batch's first packet"),
    Field("sensor", pa.string(), "the sensor (host name, or 'replay')"),
    Field("source", pa.string(), "capture file or interface"),
    Field("packets", pa.uint64(), "packets in the batch"),
    Field("bytes", pa.uint64(), "frame bytes in the batch"),
    Field("decode_errors", pa.uint64(), "packets whose decode_status is not 0"),
    Field("drops", pa.uint64(), "live capture: packets the kernel dropped while the batch filled (null: a file)"),
    Field("evidence", pa.string(), "live capture: directory of the sensor's retained packets (null: none kept)"),
]
SENSOR_STATS_SCHEMA = arrow_schema(SENSOR_STATS_FIELDS, "sensor_stats", 3)
ALERT_STORE_SCHEMA = arrow_schema(
    [Field(f.name, f.type, "") for f in ALERT_SCHEMA] + STORE_ALERT_FIELDS, "alerts", 1)
MESSAGE_ID = Field("message_id", pa.string(), "deterministic: hash of the message's time, endpoints and position")

TABLES: dict[str, TableSpec] = {
    "flows": TableSpec("flow_id", "first_seen", ip_columns=("src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"),
                       text_columns=("server_name", "application_hint"), id_fixes_time=True),
    "alerts": TableSpec("alert_id", "first_seen", ip_columns=("src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"),
                        text_columns=("signature", "category", "detail", "group")),
    "sessions": TableSpec("session_id", "first_seen", replace=True, ip_columns=("ue_ip", "gnb_ip", "upf_ip", "smf_ip",
                                                                                 "amf_ip"),
                          text_columns=("subscriber", "dnn", "snssai")),
    "nf_inventory": TableSpec("nf_id", "last_seen", replace=True, ip_columns=("ip",), text_columns=("role",)),
    "incidents": TableSpec("incident_id", "first_seen", replace=True, text_columns=("title",),
                           analyst_columns=("state",)),
    "notifications": TableSpec("notification_id", "created", replace=True,
                               text_columns=("title", "channel", "route", "last_error")),
    "sensor_stats": TableSpec("stats_id", "ts"),
    "intel_feeds": TableSpec("feed", "loaded_at", replace=True, text_columns=("feed", "path", "error")),
    "notify_routes": TableSpec("route", "loaded_at", replace=True, text_columns=("route", "source", "error")),
    "posture": TableSpec("scope", "updated", replace=True, text_columns=("scope", "top_signature", "reason")),
    "posture_changes": TableSpec("change_id", "ts", text_columns=("scope", "reason")),
    "trend": TableSpec("series", "bucket", replace=True, text_columns=("series",)),
    "trend_warnings": TableSpec("warning_id", "ts", text_columns=("series", "reason")),
    **{f"proto_{name}": TableSpec("message_id", "ts", id_fixes_time=True, ip_columns=("src_ip", "dst_ip"),
                                  text_columns=("msg_name",))
       for name in PROTO_SCHEMAS},
}
SCHEMAS: dict[str, pa.Schema] = {
    "flows": FLOW_SCHEMA,
    "alerts": ALERT_STORE_SCHEMA,
    "sessions": SESSION_SCHEMA,
    "incidents": INCIDENT_SCHEMA,
    "nf_inventory": INVENTORY_SCHEMA.insert(0, pa.field("nf_id", pa.string())),
    "notifications": NOTIFICATION_SCHEMA,
    "sensor_stats": SENSOR_STATS_SCHEMA,
    "intel_feeds": FEED_STATUS_SCHEMA,
    "notify_routes": NOTIFY_ROUTE_SCHEMA,
    "posture": POSTURE_SCHEMA,
    "posture_changes": POSTURE_CHANGE_SCHEMA,
    "trend": TREND_SCHEMA,
    "trend_warnings": TREND_WARNING_SCHEMA,
    **{f"proto_{name}": schema.insert(0, pa.field(MESSAGE_ID.name, MESSAGE_ID.type))
       for name, schema in PROTO_SCHEMAS.items()},
}
#: early-warning grades of alerts (alerts.level), most severe first
GRADES = ("red", "orange", "yellow", "blue")
#: 5G planes of the protocol mix, in display order (flows.plane)
PLANES = ("N2", "N3", "N4", "SBI", "N6", "S1/S11/S5", "Diameter", "other")


def check_incident_state(state: str) -> None:
    if state not in INCIDENT_STATES:
        raise StoreError(f"unknown incident state {state!r}; one of {', '.join(INCIDENT_STATES)}")


def prepare(name: str, table: pa.Table) -> pa.Table:
    """A table as the store keeps it: its store schema, with the id and store-only columns filled."""
    if name not in SCHEMAS:
        raise StoreError(f"unknown table {name!r}; tables: {', '.join(SCHEMAS)}")
    n = table.num_rows
    if name == "alerts":
        if "status" not in table.column_names:
            table = table.append_column("status", pa.array(["new"] * n, pa.string()))
        if "status_changed" not in table.column_names:
            table = table.append_column("status_changed", pa.nulls(n, pa.timestamp("ns", tz="UTC")))
    elif name == "nf_inventory" and "nf_id" not in table.column_names:
        table = table.add_column(0, "nf_id", pc.binary_join_element_wise(table["ip"], table["role"], "|"))
    elif name.startswith("proto_") and "message_id" not in table.column_names:
        table = table.add_column(0, "message_id", pa.array(_row_hashes(
            table, ["ts", "src_ip", "dst_ip", "src_port", "dst_port"]), pa.string()))
    schema = SCHEMAS[name]
    return table.select([f.name for f in schema]).cast(schema)


def _row_hashes(table: pa.Table, columns: list[str]) -> list[str]:
    """Per row: a hash of ``columns`` and of the row's rank among rows with the same values (several
    messages in one packet)."""
    keys = list(zip(*(table[c].cast(pa.string()).to_pylist() for c in columns)))
    seen: dict[tuple[Any, ...], int] = {}
    out = []
    for k in keys:
        rank = seen.get(k, 0)
        seen[k] = rank + 1
        out.append(hashlib.blake2b(repr((k, rank)).encode(), digest_size=10).hexdigest())
    return out


def stats_id(sensor: str, source: str, first_ts_ns: int) -> str:
    return hashlib.blake2b(f"{sensor}|{source}|{first_ts_ns}".encode(), digest_size=10).hexdigest()


class BatchRow(Protocol):
    """What sensor_stats records of one packet batch (``ingest.pipeline.BatchInfo``)."""

    source: str
    first_ts_ns: int
    last_ts_ns: int
    packets: int
    bytes: int
    decode_errors: int
    dropped: int | None
    evidence: str | None


def sensor_stats_table(sensor: str, batches: Sequence[BatchRow]) -> pa.Table:
    """sensor_stats rows of packet batches."""
    rows = [{"stats_id": stats_id(sensor, b.source, b.first_ts_ns), "ts": b.last_ts_ns, "first_ts": b.first_ts_ns,
             "sensor": sensor, "source": b.source, "packets": b.packets, "bytes": b.bytes,
             "decode_errors": b.decode_errors, "drops": b.dropped, "evidence": b.evidence} for b in batches]
    return pa.Table.from_pylist(rows, schema=SENSOR_STATS_SCHEMA)  # times as ns integers: Arrow takes them


@dataclass(frozen=True)
class Condition:
    """``field op value``: eq, ne, in, gt, gte, lt, lte, cidr (address columns), contains, prefix, has (an element
    of a list column: alerts' technique tags)."""

    field: str
    op: str
    value: Any

    OPS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "cidr", "contains", "prefix", "has")

    def __post_init__(self) -> None:
        if self.op not in self.OPS:
            raise StoreError(f"unknown operator {self.op!r}: one of {', '.join(self.OPS)}")
        if self.op == "cidr":
            try:
                ipaddress.ip_network(str(self.value), strict=False)
            except ValueError as e:
                raise StoreError(f"{self.field}: not an address or CIDR: {self.value!r}") from e


@dataclass
class Query:
    """A list query on one table: conditions, an address/CIDR on any of its address columns, free text,
    a time range on its time column, sort and page; optionally only some columns of each row (a list needs
    far fewer than a detail view: reading 14 of the flows' 72 columns halves a search)."""

    table: str
    where: list[Condition] = field(default_factory=list)
    ip: str | None = None
    text: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    sort: str | None = None  # column, "-column" for descending; default: time, newest first
    limit: int = 50
    offset: int = 0
    columns: tuple[str, ...] = ()  # the columns of each row (the id always); all when empty

    def __post_init__(self) -> None:
        if self.table not in TABLES and self.table != "assets":
            raise StoreError(f"unknown table {self.table!r}; tables: {', '.join([*TABLES, 'assets'])}")
        columns = set(ASSET_SCHEMA.names if self.table == "assets" else SCHEMAS[self.table].names)
        unknown = [c for c in self.columns if c not in columns]
        if unknown:
            raise StoreError(f"{self.table} has no column {unknown[0]!r}")
        for c in self.where:
            if c.field not in columns:
                raise StoreError(f"{self.table} has no column {c.field!r}")
        if self.sort and self.sort.lstrip("-") not in columns:
            raise StoreError(f"cannot sort {self.table} by {self.sort!r}: no such column")
        if self.ip is not None:
            Condition("ip", "cidr", self.ip)
        if not 0 <= self.limit <= 10_000 or self.offset < 0:
            raise StoreError("limit must be 0..10000 and offset >= 0")

    @property
    def spec(self) -> TableSpec:
        return ASSET_SPEC if self.table == "assets" else TABLES[self.table]

    @property
    def schema(self) -> pa.Schema:
        """The schema of the rows this query returns: its columns (and the id) in the table's order."""
        schema = ASSET_SCHEMA if self.table == "assets" else SCHEMAS[self.table]
        if not self.columns:
            return schema
        wanted = {*self.columns, self.spec.id_column}
        return pa.schema([f for f in schema if f.name in wanted])

    def order(self) -> tuple[str, bool]:
        """(column, descending); ties are broken by the table's id, ascending."""
        if self.sort:
            return self.sort.lstrip("-"), self.sort.startswith("-")
        return self.spec.time_column, True


def column_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,c"`` (an API's or a command line's list of columns) -> ``("a", "b", "c")``."""
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int


#: assets: one row per address seen in flows, computed from the stored flows at query time (so it
#: can never double-count a re-delivered batch), with the NF roles the inventory gives it
ASSET_FIELDS = [
    Field("ip", pa.string(), "the address"),
    Field("first_seen", pa.timestamp("ns", tz="UTC"), "first flow from or to it (to the ms)"),
    Field("last_seen", pa.timestamp("ns", tz="UTC"), "last flow from or to it (to the ms)"),
    Field("flows", pa.uint64(), "flows it took part in"),
    Field("bytes_sent", pa.uint64(), "bytes it sent"),
    Field("bytes_received", pa.uint64(), "bytes it received"),
    Field("peers", pa.uint64(), "distinct addresses it talked to"),
    Field("roles", pa.list_(pa.string()), "NF roles (nf_inventory)"),
]
ASSET_SCHEMA = arrow_schema(ASSET_FIELDS, "assets", 1)
ASSET_SPEC = TableSpec("ip", "last_seen", ip_columns=("ip",))

TOP_DIMENSIONS = {"talkers": "src_ip", "destinations": "dst_ip", "ports": "dst_port",
                  "applications": "application_hint", "planes": "plane"}
TOP_METRICS = ("bytes", "flows", "packets")


class Store(ABC):
    """One backend. Lists return :class:`Page`; aggregates return rows as dicts."""

    @abstractmethod
    def write(self, name: str, table: pa.Table) -> int:
        """Store rows of table ``name`` (any column order; prepared here); returns the rows new to the store."""

    def warm(self) -> None:  # noqa: B027 (most backends have nothing to prepare)
        """Prepare what the dashboards read (a backend may keep partial sums); a console calls it at start."""

    def write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        """:meth:`write` of several tables (a batch's results), each; a backend may do it in one go."""
        return {name: self.write(name, table) for name, table in tables.items()}

    @abstractmethod
    def search(self, q: Query) -> Page:
        """Rows of ``q.table`` matching ``q`` (assets included), sorted and paged."""

    @abstractmethod
    def histogram(self, start: dt.datetime | None, end: dt.datetime | None, bucket_s: int) -> list[dict[str, Any]]:
        """Per time bucket (flow start): flows, packets, bytes; and alerts (alert start), in all and per
        early-warning grade (``alerts_red`` ... ``alerts_blue``)."""

    @abstractmethod
    def top(self, by: str, metric: str, start: dt.datetime | None, end: dt.datetime | None,
            n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` largest values of :data:`TOP_DIMENSIONS` ``by``, by ``metric``."""

    @abstractmethod
    def group(self, q: Query, by: tuple[str, ...], n: int = 10) -> list[dict[str, Any]]:
        """Rows matching ``q`` counted per distinct value of the columns ``by`` (``count``), the ``n`` largest
        first (ties by the values): alerts by signature, by source, by source and target..."""

    @abstractmethod
    def extent(self, name: str) -> tuple[str | None, str | None]:
        """First and last value of table ``name``'s time column (:func:`iso_ns`), or (None, None) when empty."""

    @abstractmethod
    def set_alert_status(self, alert_id: str, status: str) -> bool:
        """Triage: returns False when no such alert."""

    @abstractmethod
    def set_incident_state(self, incident_id: str, state: str) -> bool:
        """An analyst moves an incident (new, investigating, contained, closed); False when no such incident.
        Later snapshots of the incident keep it."""

    @abstractmethod
    def retain(self, name: str, max_age_days: float | None = None, max_bytes: int | None = None,
               dry_run: bool = False) -> int:
        """Drop rows of ``name`` older than ``max_age_days`` (before its newest row), then oldest days until
        the table is under ``max_bytes``; returns rows dropped (``dry_run``: that would be, nothing is)."""

    @abstractmethod
    def put_state(self, key: str, data: bytes) -> None:
        """Keep a worker's checkpoint (opaque bytes) under ``key``, replacing the older one."""

    @abstractmethod
    def get_state(self, key: str) -> bytes | None:
        """The checkpoint kept under ``key``, or None."""

    @abstractmethod
    def close(self) -> None: ...

    # -- built on the above: identical on every backend --
    def flow(self, flow_id: int) -> dict[str, Any] | None:
        """A flow with its alerts and its session."""
        page = self.search(Query("flows", [Condition("flow_id", "eq", flow_id)], limit=1))
        if not page.rows:
            return None
        row = page.rows[0]
        row["alerts"] = self.search(Query("alerts", [Condition("flow_id", "eq", flow_id)], limit=1000)).rows
        sid = row.get("session_id")
        found = self.search(Query("sessions", [Condition("session_id", "eq", sid)], limit=1)).rows if sid else []
        row["session"] = found[0] if found else None
        return row

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        rows = self.search(Query("incidents", [Condition("incident_id", "eq", incident_id)], limit=1)).rows
        return rows[0] if rows else None

    def incident_alerts(self, incident: dict[str, Any]) -> list[dict[str, Any]]:
        """The alerts an incident row lists, oldest first."""
        ids = incident["alert_ids"]
        return self.search(Query("alerts", [Condition("alert_id", "in", ids)], sort="first_seen",
                                 limit=len(ids) or 1)).rows

    def posture_impact(self, incident: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """What an incident did to the situational posture: the warning-level changes its alerts raised
        (oldest first), and where the scopes they touched stand now."""
        ids = incident["alert_ids"]
        changes = self.search(Query("posture_changes", [Condition("alert_id", "in", ids)], sort="ts",
                                    limit=500)).rows if ids else []
        scopes = list(dict.fromkeys(c["scope"] for c in changes))
        now = self.search(Query("posture", [Condition("scope", "in", scopes)], sort="-score",
                                limit=len(scopes))).rows if scopes else []
        return {"changes": changes, "scopes": now}

    def notifications_about(self, subject_id: str) -> list[dict[str, Any]]:
        """The notifications sent about an alert, incident or trend warning (at most 100, newest first)."""
        return self.search(Query("notifications", [Condition("subject_id", "eq", subject_id)], limit=100)).rows

    def acknowledged_incidents(self, incident_ids: list[str]) -> set[str]:
        """Of these incidents, those an analyst has taken up (their state is no longer ``new``)."""
        if not incident_ids:
            return set()
        rows = self.search(Query("incidents", [Condition("incident_id", "in", list(incident_ids)),
                                               Condition("state", "ne", "new")], limit=len(incident_ids))).rows
        return {r["incident_id"] for r in rows}

    def plane_mix(self, start: dt.datetime | None = None, end: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Flows, packets and bytes per 5G plane, in :data:`PLANES` order."""
        rows = {r["plane"]: r for r in self.top("planes", "bytes", start, end, n=len(PLANES))}
        return [rows[p] for p in PLANES if p in rows]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_status(status: str) -> None:
    if status not in ALERT_STATUSES:
        raise StoreError(f"unknown status {status!r}: one of {', '.join(ALERT_STATUSES)}")


def check_group(q: Query, by: tuple[str, ...]) -> None:
    if q.table == "assets":
        raise StoreError("assets are one row per address already: search them instead of grouping")
    bad = [c for c in by if c not in SCHEMAS[q.table].names]
    if not by or bad:
        raise StoreError(f"cannot group {q.table} by {', '.join(bad) or 'nothing'}")


def check_top(by: str, metric: str) -> None:
    if by not in TOP_DIMENSIONS:
        raise StoreError(f"top by {by!r}: one of {', '.join(TOP_DIMENSIONS)}")
    if metric not in TOP_METRICS:
        raise StoreError(f"top metric {metric!r}: one of {', '.join(TOP_METRICS)}")


def ns(t: dt.datetime | None) -> int | None:
    """A time as ns since the epoch (naive times are UTC)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1_000_000) * 1000


def iso_ns(t_ns: int) -> str:
    """ns since the epoch as ISO-8601 UTC with all nine digits: 2024-01-02T03:04:05.123456789Z."""
    s, frac = divmod(int(t_ns), 1_000_000_000)
    return dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def ns_of_iso(text: str) -> int:
    """The inverse of :func:`iso_ns` (any number of fraction digits): ns since the epoch."""
    whole = dt.datetime.fromisoformat(text[:19] + "+00:00")
    return int(whole.timestamp()) * 1_000_000_000 + int(text[20:29].rstrip("Z").ljust(9, "0") or 0)


def datetime_of_ns(t_ns: int) -> dt.datetime:
    """ns since the epoch as a UTC datetime (to the microsecond, as Python keeps it)."""
    return dt.datetime.fromtimestamp(t_ns // 10**9, dt.UTC) + dt.timedelta(microseconds=t_ns % 10**9 // 1000)


def datetime_of_iso(text: str) -> dt.datetime:
    """An :func:`iso_ns` time as a UTC datetime."""
    return datetime_of_ns(ns_of_iso(text))


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """Result rows as JSON-ready dicts, times as :func:`iso_ns` text (both backends answer alike)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            values = table.column(i).cast(pa.int64()).to_pylist()
            table = table.set_column(i, f.name, pa.array([None if v is None else iso_ns(v) for v in values],
                                                         pa.string()))
    return table.to_pylist()


def fill_buckets(buckets: dict[int, dict[str, Any]], width_ns: int) -> list[dict[str, Any]]:
    """Histogram rows for every bucket from the first to the last, zeros where nothing happened."""
    if not buckets:
        return []
    zero = {"flows": 0, "packets": 0, "bytes": 0, "alerts": 0, **{f"alerts_{g}": 0 for g in GRADES}}
    return [{"bucket": iso_ns(k), **zero, **buckets.get(k, {})}
            for k in range(min(buckets), max(buckets) + width_ns, width_ns)]


def sort_groups(rows: list[dict[str, Any]], by: tuple[str, ...], n: int) -> list[dict[str, Any]]:
    """Group rows in the order both backends give: count descending, then keys ascending (nulls last)."""
    rows.sort(key=lambda r: (-r["count"], *[(r[c] is None, r[c] if r[c] is not None else 0) for c in by]))
    return rows[:n]
