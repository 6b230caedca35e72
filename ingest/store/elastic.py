"""The Elasticsearch store: ECS documents in daily indices, for deployments beyond one machine.

Documents use ECS field names (``@timestamp``, ``source.ip``, ``destination.port``,
``network.community_id``, ``event.kind``, ``rule.id``, ``threat.technique.id``…)
and a ``fiveg.*`` namespace (TEID, QFI, session, plane); other columns sit
under ``liaowang.*``.  Index templates give every field an explicit mapping.
Append tables go to one index per day of their time column
(``liaowang-flows-2025.05.14``), so retention drops whole indices, the way ILM
would, on any distribution; snapshots (sessions, NF inventory) live in one
index each.  The document id is the row's deterministic id: bulk ``create``
skips rows already stored, so re-delivery never duplicates.  Bulk requests
retry with back-off; rows a bulk request rejects are retried, then reported.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from ingest.store.api import (
    ASSET_SCHEMA,
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
    datetime_of_ns,
    fill_buckets,
    iso_ns,
    ns,
    prepare,
    rows_of,
    sort_groups,
)

PREFIX = "liaowang-"
BULK_DOCS = 2000
RETRIES = 5

_NETWORK = {"first_seen": "@timestamp", "last_seen": "event.end", "src_ip": "source.ip", "dst_ip": "destination.ip",
            "src_port": "source.port", "dst_port": "destination.port", "ip_proto": "network.iana_number",
            "community_id": "network.community_id", "teid": "fiveg.teid", "tunnel_src_ip": "fiveg.tunnel.source_ip",
            "tunnel_dst_ip": "fiveg.tunnel.destination_ip"}
#: our column -> ECS field, per table; unlisted columns go under ``liaowang.<table>.``
ECS: dict[str, dict[str, str]] = {
    "flows": {**_NETWORK, "flow_id": "event.id", "src2dst_bytes": "source.bytes", "dst2src_bytes": "destination.bytes",
              "src2dst_packets": "source.packets", "dst2src_packets": "destination.packets",
              "bidirectional_bytes": "network.bytes", "bidirectional_packets": "network.packets",
              "application_hint": "network.protocol", "server_name": "destination.domain", "vlan_id": "network.vlan.id",
              "dst2src_teid": "fiveg.dst2src_teid", "gtpu_qfi": "fiveg.qfi", "tunnel_type": "fiveg.tunnel.type",
              "session_id": "fiveg.session_id", "plane": "fiveg.plane"},
    "alerts": {**_NETWORK, "alert_id": "event.id", "severity": "event.severity", "score": "event.risk_score",
               "signature": "rule.name", "rule_id": "rule.id", "category": "rule.category", "tags": "tags",
               "flow_id": "liaowang.alerts.flow_id", "session": "fiveg.session"},
    "sessions": {"first_seen": "@timestamp", "session_id": "fiveg.session_id", "subscriber": "fiveg.subscriber",
                 "ue_ip": "fiveg.ue_ip", "gnb_ip": "fiveg.gnb_ip", "upf_ip": "fiveg.upf_ip", "dnn": "fiveg.dnn",
                 "snssai": "fiveg.snssai", "ul_teid": "fiveg.ul_teid", "dl_teid": "fiveg.dl_teid",
                 "cp_seid": "fiveg.cp_seid", "up_seid": "fiveg.up_seid"},
    "nf_inventory": {"last_seen": "@timestamp", "ip": "host.ip", "role": "fiveg.nf_role"},
    "sensor_stats": {"ts": "@timestamp", "sensor": "observer.name"},
}
_KIND = {"flows": ("event", ["network"]), "alerts": ("alert", ["network", "intrusion_detection"])}
_TECHNIQUE = re.compile(r"^attack\.(t\d{4}(?:\.\d{3})?)$", re.I)


#: shard requests per node a search sends at once (see ElasticStore.search)
MAX_SHARD_REQUESTS = 4096


def _as_text(f: pa.Field) -> bool:
    """64-bit unsigned identifiers (SEIDs, NGAP ids) can exceed ES's signed long: stored as text."""
    return f.type == pa.uint64() and ("seid" in f.name or f.name.endswith("_id"))


def field_of(table: str, column: str) -> str:
    if table == "assets":
        return column
    return ECS.get(table, {}).get(column) or (f"liaowang.{table}.{column}" if table in ("flows", "alerts")
                                             else f"{table}.{column}")


def _mapping(table: str, schema: pa.Schema) -> dict[str, Any]:
    spec = TABLES[table]
    props: dict[str, Any] = {}

    def put(path: str, value: dict[str, Any]) -> None:
        node = props
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {"properties": {}})["properties"]
        node[parts[-1]] = value

    for f in schema:
        t = f.type
        if pa.types.is_timestamp(t):  # ns times; second-resolution ones from the protocols may predate 1970
            m: dict[str, Any] = {"type": "date_nanos"} if t.unit == "ns" else {"type": "date", "ignore_malformed": True}
        elif f.name in spec.ip_columns or f.name in ("ip",):
            m = {"type": "ip"}
        elif _as_text(f):
            m = {"type": "keyword"}
        elif pa.types.is_integer(t):
            m = {"type": "long"}
        elif pa.types.is_floating(t):
            m = {"type": "double"}
        elif pa.types.is_boolean(t):
            m = {"type": "boolean"}
        elif pa.types.is_string(t) and f.name in ("evidence", "session", "detail"):
            m = {"type": "keyword", "ignore_above": 8191, "fields": {"lower": {"type": "keyword",
                                                                               "normalizer": "lowercase"}}}
        elif pa.types.is_string(t) or (pa.types.is_list(t) and pa.types.is_string(t.value_type)):
            m = {"type": "keyword", "fields": {"lower": {"type": "keyword", "normalizer": "lowercase"}}}
        elif pa.types.is_list(t) and pa.types.is_integer(t.value_type):
            m = {"type": "long"}
        else:  # structs, lists of structs, bytes: kept in _source, not searchable
            m = {"type": "object", "enabled": False} if not pa.types.is_binary(t) else {"type": "binary"}
        put(field_of(table, f.name), m)
    put("event.kind", {"type": "keyword"})
    put("event.category", {"type": "keyword"})
    if table == "alerts":
        put("threat.technique.id", {"type": "keyword"})
    return {"dynamic": "strict", "properties": props}


class ElasticStore(Store):
    def __init__(self, url: str) -> None:
        from elasticsearch import Elasticsearch

        auth: dict[str, Any] = {}
        if os.environ.get("LIAOWANG_ES_API_KEY"):
            auth["api_key"] = os.environ["LIAOWANG_ES_API_KEY"]
        elif os.environ.get("LIAOWANG_ES_USER"):
            auth["basic_auth"] = (os.environ["LIAOWANG_ES_USER"], os.environ.get("LIAOWANG_ES_PASSWORD", ""))
        if os.environ.get("LIAOWANG_ES_CA"):
            auth["ca_certs"] = os.environ["LIAOWANG_ES_CA"]
        self.url = url
        self.es = Elasticsearch(url, request_timeout=60, retry_on_timeout=True, max_retries=3, **auth)
        self._ready: set[str] = set()
        try:
            self.es.info()
        except Exception as e:  # connection refused, TLS, auth: one message
            raise StoreError(f"{url}: cannot reach Elasticsearch: {e}") from e

    # -- set-up --
    def _template(self, table: str) -> None:
        if table in self._ready:
            return
        schema = SCHEMAS[table]
        self.es.indices.put_index_template(
            name=f"{PREFIX}{table}", index_patterns=[f"{PREFIX}{table}-*"], priority=200,
            template={"settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"},
                      "mappings": _mapping(table, schema)})
        self._ready.add(table)

    def _index_of(self, table: str, t_ns: int | None) -> str:
        if TABLES[table].replace or t_ns is None:
            return f"{PREFIX}{table}-current"
        return f"{PREFIX}{table}-" + dt.datetime.fromtimestamp(t_ns // 1_000_000_000, tz=dt.UTC).strftime("%Y.%m.%d")

    # -- documents --
    def _documents(self, table: str, rows: pa.Table) -> list[tuple[str, str, dict[str, Any]]]:
        spec = TABLES[table]
        times = {f.name for f in rows.schema if pa.types.is_timestamp(f.type)}
        binary = {f.name for f in rows.schema if pa.types.is_binary(f.type)}
        text = {f.name for f in rows.schema if _as_text(f)}
        for name in times:
            rows = rows.set_column(rows.schema.get_field_index(name), name, rows.column(name).cast(pa.int64()))
        out = []
        for r in rows.to_pylist():
            doc: dict[str, Any] = {}
            for k, v in r.items():
                if v is None:
                    continue
                if k in times:
                    v = iso_ns(v)
                elif k in binary:
                    v = base64.b64encode(v).decode()
                elif k in text:
                    v = str(v)
                elif isinstance(v, list) and v and isinstance(v[0], dict):
                    v = [{a: base64.b64encode(b).decode() if isinstance(b, bytes) else b for a, b in d.items()}
                         for d in v]
                _put(doc, field_of(table, k), v)
            if table in _KIND:
                doc["event"]["kind"], doc["event"]["category"] = _KIND[table]
            if table == "alerts":
                techniques = [m.group(1).upper() for t in r.get("tags") or [] if (m := _TECHNIQUE.match(t))]
                if techniques:
                    doc["threat"] = {"technique": {"id": techniques}}
            t_ns = r.get(spec.time_column)
            out.append((self._index_of(table, t_ns), str(r[spec.id_column]), doc))
        return out

    def _row(self, table: str, doc: dict[str, Any], schema: pa.Schema | None = None) -> dict[str, Any]:
        if schema is None:
            schema = ASSET_SCHEMA if table == "assets" else SCHEMAS[table]
        row: dict[str, Any] = {}
        for f in schema:
            v = _get(doc, field_of(table, f.name))
            if v is not None and pa.types.is_binary(f.type):
                v = base64.b64decode(v)
            elif v is not None and _as_text(f):
                v = int(v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                kinds = {c.name: c.type for c in f.type.value_type}
                v = [{a: base64.b64decode(b) if b is not None and pa.types.is_binary(kinds.get(a, pa.null())) else b
                      for a, b in d.items()} for d in v]
            elif v is not None and pa.types.is_list(f.type) and not isinstance(v, list):
                v = [v]
            row[f.name] = v
        return row

    # -- writes --
    def write(self, name: str, table: pa.Table) -> int:
        table = prepare(name, table)
        if not table.num_rows:
            return 0
        self._template(name)
        spec = TABLES[name]
        op = ("update" if spec.analyst_columns else "index") if spec.replace else "create"
        docs = self._documents(name, table)
        if op == "update":  # an upsert that leaves what analysts set on a stored document alone
            paths = [field_of(name, c).split(".") for c in spec.analyst_columns]
            docs = [(index, doc_id, {"doc": _without(doc, paths), "upsert": doc}) for index, doc_id, doc in docs]
        added = 0
        for i in range(0, len(docs), BULK_DOCS):
            added += self._bulk(op, docs[i:i + BULK_DOCS])
        return added

    def _bulk(self, op: str, docs: list[tuple[str, str, dict[str, Any]]]) -> int:
        """Send ``docs``; conflicts (already stored) are not errors; other rejected rows are retried."""
        added, todo = 0, docs
        for attempt in range(RETRIES):
            body: list[dict[str, Any]] = []
            for index, doc_id, doc in todo:
                body += [{op: {"_index": index, "_id": doc_id}}, doc]
            try:
                resp = self.es.bulk(operations=body, refresh=False)
            except Exception as e:  # transport errors: back off and resend everything
                if attempt == RETRIES - 1:
                    raise StoreError(f"{self.url}: bulk indexing failed: {e}") from e
                time.sleep(0.5 * 2 ** attempt)
                continue
            retry, errors = [], []
            for (index, doc_id, doc), item in zip(todo, resp["items"]):
                res = item[op]
                status = res.get("status", 500)
                if status in (200, 201):
                    added += 1
                elif status == 409:
                    pass  # already stored: the id is deterministic
                elif status == 429 or status >= 500:
                    retry.append((index, doc_id, doc))
                else:
                    errors.append(f"{doc_id}: {res.get('error', {}).get('reason', status)}")
            if errors:
                raise StoreError(f"{self.url}: {len(errors)} documents rejected, e.g. {errors[0]}")
            if not retry:
                return added
            todo = retry
            time.sleep(0.5 * 2 ** attempt)
        raise StoreError(f"{self.url}: {len(todo)} documents still rejected after {RETRIES} tries")

    def refresh(self) -> None:
        self.es.indices.refresh(index=f"{PREFIX}*")

    def set_alert_status(self, alert_id: str, status: str) -> bool:
        check_status(status)
        return self._update("alerts", alert_id, {"status": status, "status_changed": iso_ns(time.time_ns())})

    def set_incident_state(self, incident_id: str, state: str) -> bool:
        check_incident_state(state)
        return self._update("incidents", incident_id, {"state": state})

    def _update(self, table: str, doc_id: str, values: dict[str, Any]) -> bool:
        """Set ``values`` (columns of ``table``) on the stored document ``doc_id``; False when there is none."""
        hits = self.es.search(index=f"{PREFIX}{table}-*", query={"ids": {"values": [doc_id]}}, size=1,
                              ignore_unavailable=True, allow_no_indices=True)["hits"]["hits"]
        if not hits:
            return False
        doc: dict[str, Any] = {}
        for column, value in values.items():
            _put(doc, field_of(table, column), value)
        self.es.update(index=hits[0]["_index"], id=doc_id, refresh=True, doc=doc)
        return True

    def retain(self, name: str, max_age_days: float | None = None, max_bytes: int | None = None,
               dry_run: bool = False) -> int:
        stats: list[dict[str, Any]] = self.es.cat.indices(  # type: ignore[assignment]
            index=f"{PREFIX}{name}-*", format="json", bytes="b").body
        daily = sorted((i["index"], int(i["docs.count"] or 0), int(i["store.size"] or 0)) for i in stats
                       if not i["index"].endswith("-current"))
        drop: list[tuple[str, int, int]] = []
        if max_age_days is not None and daily:
            newest = dt.datetime.strptime(daily[-1][0].rsplit("-", 1)[1], "%Y.%m.%d")
            drop += [d for d in daily if (newest - dt.datetime.strptime(d[0].rsplit("-", 1)[1], "%Y.%m.%d")).days
                     > max_age_days]
        if max_bytes is not None:
            left = [d for d in daily if d not in drop]
            size = sum(d[2] for d in left)
            while left and size > max_bytes:
                d = left.pop(0)
                drop.append(d)
                size -= d[2]
        for index, _, _ in drop if not dry_run else []:
            self.es.indices.delete(index=index)
        return sum(d[1] for d in drop)

    # -- worker checkpoints: one document per key in an index of their own --
    def put_state(self, key: str, data: bytes) -> None:
        index = f"{PREFIX}state"
        if index not in self._ready:
            if not self.es.indices.exists(index=index):
                self.es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0},
                                       mappings={"dynamic": "strict", "properties": {"data": {"type": "binary"}}})
            self._ready.add(index)
        self.es.index(index=index, id=key, document={"data": base64.b64encode(data).decode()}, refresh="wait_for")

    def get_state(self, key: str) -> bytes | None:
        from elasticsearch import NotFoundError

        try:
            doc = self.es.get(index=f"{PREFIX}state", id=key)
        except NotFoundError:
            return None
        return base64.b64decode(doc["_source"]["data"])

    def close(self) -> None:
        self.es.close()

    # -- queries --
    def _query(self, q: Query) -> dict[str, Any]:
        must: list[dict[str, Any]] = [_clause(q.table, c) for c in q.where]
        must_not: list[dict[str, Any]] = [_clause(q.table, Condition(c.field, "eq", c.value))
                                          for c in q.where if c.op == "ne"]
        must = [m for m, c in zip(must, q.where) if c.op != "ne"]
        if q.ip:
            must.append({"bool": {"should": [_clause(q.table, Condition(c, "cidr", q.ip)) for c in q.spec.ip_columns],
                                  "minimum_should_match": 1}})
        if q.text and q.spec.text_columns:
            pattern = f"*{_escape(q.text.lower())}*"
            must.append({"bool": {"should": [{"wildcard": {field_of(q.table, c) + ".lower": {"value": pattern}}}
                                             for c in q.spec.text_columns], "minimum_should_match": 1}})
        rng = {}
        if q.start is not None:
            rng["gte"] = iso_ns(ns(q.start) or 0)
        if q.end is not None:
            rng["lt"] = iso_ns(ns(q.end) or 0)
        if rng:
            must.append({"range": {field_of(q.table, q.spec.time_column): rng}})
        return {"bool": {"filter": must, "must_not": must_not}}

    def search(self, q: Query) -> Page:
        if q.table == "assets":
            return self._assets(q)
        col, desc = q.order()
        # missing values sort last by default; date_nanos sorts across indices fail on ES 7.x unless as long
        first: dict[str, Any] = {"order": "desc" if desc else "asc"}
        if pa.types.is_timestamp(SCHEMAS[q.table].field(col).type):
            first["numeric_type"] = "long"
        sort = [{field_of(q.table, col): first},
                {field_of(q.table, q.spec.id_column): {"order": "asc"}}]
        # every shard at once.  Seen once (CI, ES 7.9, 6 daily indices, default 5 at once): a shard failed with a
        # date_nanos sort value read as milliseconds ("cannot be stored in nanosecond resolution"); shards queried
        # after others get the results' bottom sort value to skip by, the suspected path.  Not reproduced since.
        schema = q.schema
        includes = [field_of(q.table, c) for c in schema.names] if q.columns else None
        resp = self.es.search(index=f"{PREFIX}{q.table}-*", query=self._query(q), sort=sort, size=q.limit,
                              from_=q.offset, track_total_hits=True, ignore_unavailable=True, allow_no_indices=True,
                              max_concurrent_shard_requests=MAX_SHARD_REQUESTS, source_includes=includes)
        _check_shards(resp)
        return Page([self._row(q.table, h["_source"], schema) for h in resp["hits"]["hits"]],
                    resp["hits"]["total"]["value"])

    def _aggregate(self, table: str, query: dict[str, Any], aggs: dict[str, Any]) -> dict[str, Any]:
        resp = self.es.search(index=f"{PREFIX}{table}-*", query=query, aggs=aggs, size=0, ignore_unavailable=True,
                              allow_no_indices=True)
        _check_shards(resp)
        return resp.get("aggregations") or {}

    def histogram(self, start: dt.datetime | None, end: dt.datetime | None, bucket_s: int) -> list[dict[str, Any]]:
        width = int(bucket_s) * 1_000_000_000
        out: dict[int, dict[str, Any]] = {}
        sums = {"packets": {"sum": {"field": "network.packets"}}, "bytes": {"sum": {"field": "network.bytes"}}}
        levels = {"level": {"terms": {"field": field_of("alerts", "level"), "size": 10}}}
        for table, sub in (("flows", sums), ("alerts", levels)):
            aggs = {"h": {"date_histogram": {"field": "@timestamp", "fixed_interval": f"{int(bucket_s)}s",
                                             "min_doc_count": 1}, "aggs": sub}}
            for b in self._aggregate(table, self._query(Query(table, start=start, end=end)), aggs).get(
                    "h", {}).get("buckets", []):
                row = out.setdefault(int(b["key"]) * 1_000_000, {})
                if table == "flows":
                    row.update(flows=b["doc_count"], packets=int(b["packets"]["value"]), bytes=int(b["bytes"]["value"]))
                else:
                    row["alerts"] = b["doc_count"]
                    row.update({f"alerts_{g['key']}": g["doc_count"] for g in b["level"]["buckets"]
                                if g["key"] in GRADES})
        return fill_buckets(out, width)

    def extent(self, name: str) -> tuple[str | None, str | None]:
        # min/max aggregations compute in doubles of milliseconds (and ascending date_nanos sorts across indices
        # fail on ES 7): find the millisecond, then the exact nanoseconds among the rows inside it
        col = TABLES[name].time_column
        aggs = {"lo": {"min": {"field": "@timestamp"}}, "hi": {"max": {"field": "@timestamp"}}}
        res = self._aggregate(name, {"match_all": {}}, aggs)
        ends = []
        for key, pick in (("lo", min), ("hi", max)):
            ms = _ns_of(res.get(key, {}))
            if ms is None:
                return None, None
            rows = self.search(Query(name, start=datetime_of_ns(ms), end=datetime_of_ns(ms + 1_000_000), limit=10_000)).rows
            ends.append(pick(r[col] for r in rows))
        return ends[0], ends[1]

    def _composite(self, table: str, query: dict[str, Any], sources: dict[str, str],
                   sub: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every bucket of a composite aggregation over ``sources`` (key name -> field, missing values as null),
        page by page, with sub-aggregations ``sub``."""
        after = None
        while True:
            comp: dict[str, Any] = {"size": 5000, "sources": [
                {k: {"terms": {"field": f, "missing_bucket": True}}} for k, f in sources.items()]}
            if after:
                comp["after"] = after
            res = self._aggregate(table, query, {"c": {"composite": comp, "aggs": sub or {}}}).get("c", {})
            yield from res.get("buckets", [])
            after = res.get("after_key")
            if not after or not res.get("buckets"):
                return

    def group(self, q: Query, by: tuple[str, ...], n: int = 10) -> list[dict[str, Any]]:
        check_group(q, by)
        sources = {c: field_of(q.table, c) for c in by}
        counts = [{**b["key"], "count": b["doc_count"]} for b in self._composite(q.table, self._query(q), sources)]
        return sort_groups(counts, by, n)

    def top(self, by: str, metric: str, start: dt.datetime | None, end: dt.datetime | None,
            n: int = 10) -> list[dict[str, Any]]:
        check_top(by, metric)
        dim = TOP_DIMENSIONS[by]
        order = [{"_count": "desc"} if metric == "flows" else {metric: "desc"}, {"_key": "asc"}]
        aggs = {"t": {"terms": {"field": field_of("flows", dim), "size": n, "order": order, "shard_size": 10 * n + 100},
                      "aggs": {"packets": {"sum": {"field": "network.packets"}},
                               "bytes": {"sum": {"field": "network.bytes"}}}}}
        buckets = self._aggregate("flows", self._query(Query("flows", start=start, end=end)), aggs).get(
            "t", {}).get("buckets", [])
        return [{dim: b.get("key_as_string", b["key"]) if dim.endswith("ip") else b["key"], "flows": b["doc_count"],
                 "packets": int(b["packets"]["value"]), "bytes": int(b["bytes"]["value"])} for b in buckets]

    def _assets(self, q: Query) -> Page:
        """Per (source, destination) sums by a composite aggregation, then the embedded store's asset SQL over
        them in memory: the same answers by the same code."""
        from ingest.store.duck import ASSETS_SQL, DuckStore, order_by, register_functions

        sums = {"first": {"min": {"field": "@timestamp"}}, "last": {"max": {"field": "event.end"}},
                "sent": {"sum": {"field": "source.bytes"}}, "recv": {"sum": {"field": "destination.bytes"}}}
        rows = [{"src_ip": b["key"]["s"], "dst_ip": b["key"]["d"], "first_seen": _ns_of(b["first"]),
                 "last_seen": _ns_of(b["last"]), "src2dst_bytes": int(b["sent"]["value"]),
                 "dst2src_bytes": int(b["recv"]["value"]), "flows": b["doc_count"]}
                for b in self._composite("flows", {"match_all": {}}, {"s": "source.ip", "d": "destination.ip"}, sums)]
        pairs = pa.Table.from_pylist(rows, schema=pa.schema([
            ("src_ip", pa.string()), ("dst_ip", pa.string()), ("first_seen", pa.int64()), ("last_seen", pa.int64()),
            ("src2dst_bytes", pa.int64()), ("dst2src_bytes", pa.int64()), ("flows", pa.int64())]))
        pairs = pairs.set_column(2, "first_seen", pairs["first_seen"].cast(pa.timestamp("ns", tz="UTC")))
        pairs = pairs.set_column(3, "last_seen", pairs["last_seen"].cast(pa.timestamp("ns", tz="UTC")))
        inventory = self.search(Query("nf_inventory", limit=10_000)).rows
        nf = pa.Table.from_pylist([{"ip": r["ip"], "role": r["role"]} for r in inventory],
                                  schema=pa.schema([("ip", pa.string()), ("role", pa.string())]))
        con = duckdb.connect()
        try:
            register_functions(con)
            con.register("pairs_", pairs)
            con.register("nf_inventory", nf)
            where, params = DuckStore._where(q)
            source = f"({ASSETS_SQL.format(pairs='SELECT * FROM pairs_')})"
            total = con.execute(f"SELECT count(*) FROM {source} t WHERE {where}", params).fetchall()[0][0]
            table = con.sql(f"""SELECT * FROM {source} t WHERE {where}
                                ORDER BY {order_by(q)}
                                LIMIT {int(q.limit)} OFFSET {int(q.offset)}""", params=params).to_arrow_table()
        finally:
            con.close()
        return Page(rows_of(table.select(q.schema.names).cast(q.schema)), int(total))


def _ns_of(agg: dict[str, Any]) -> int | None:
    """A min/max aggregation's value (ms: aggregations compute in doubles) as ns."""
    return None if agg.get("value") is None else int(agg["value"]) * 1_000_000


def _check_shards(resp: Any) -> None:
    shards = resp.get("_shards", {})
    if shards.get("failed"):
        reason = shards.get("failures", [{}])[0].get("reason", {}).get("reason", "unknown")
        raise StoreError(f"Elasticsearch: {shards['failed']} of {shards.get('total')} shards failed: {reason}")


def _clause(table: str, c: Condition) -> dict[str, Any]:
    f = field_of(table, c.field)
    value = c.value
    if isinstance(value, dt.datetime):
        value = iso_ns(ns(value) or 0)
    if c.op in ("eq", "ne", "has"):  # a term on a list field matches any element
        return {"term": {f: value}}
    if c.op == "in":
        return {"terms": {f: list(value)}}
    if c.op in ("gt", "gte", "lt", "lte"):
        return {"range": {f: {c.op: value}}}
    if c.op == "cidr":
        return {"term": {f: str(value)}}
    if c.op == "contains":
        return {"wildcard": {f + ".lower": {"value": f"*{_escape(str(value).lower())}*"}}}
    return {"prefix": {f: str(value)}}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = doc
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _without(doc: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """A copy of ``doc`` without the fields at ``paths`` (dotted names, split)."""
    out = dict(doc)
    for path in paths:
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.pop(path[-1], None)
    return out

