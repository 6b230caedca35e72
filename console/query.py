"""``liaowang query``: the console's questions from the command line, for analysts' scripts and tests."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from typing import Any

import pyarrow as pa

#: the columns shown in text output (--json prints every column)
COLUMNS = {
    "alerts": ["first_seen", "level", "score", "signature", "src_ip", "dst_ip", "dst_port", "status", "alert_id"],
    "flows": ["first_seen", "src_ip", "src_port", "dst_ip", "dst_port", "ip_proto", "plane", "application_hint",
              "bidirectional_bytes", "teid", "session_id", "flow_id"],
    "sessions": ["first_seen", "state", "subscriber", "pdu_session_id", "dnn", "snssai", "ue_ip", "gnb_ip", "upf_ip",
                 "ul_teid", "session_id"],
    "assets": ["ip", "roles", "flows", "bytes_sent", "bytes_received", "peers", "last_seen"],
    "inventory": ["ip", "role", "names", "messages", "last_seen"],
}
TABLE_OF = {"inventory": "nf_inventory"}
_WHERE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<|~|/)\s*(.*)$")
_OPS = {"=": "eq", "!=": "ne", ">": "gt", "<": "lt", ">=": "gte", "<=": "lte", "~": "contains", "/": "cidr"}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser("query", help="ask a store what the console shows (alerts, flows, top, histogram...)")
    q.add_argument("what", choices=("alerts", "flows", "sessions", "assets", "inventory", "top", "histogram", "mix"))
    q.add_argument("--store", metavar="URI", help="DuckDB store directory or http(s)://elasticsearch:9200 "
                                                  "(default: $LIAOWANG_STORE or the user's data directory)")
    q.add_argument("--since", metavar="TIME", help="ISO time (UTC unless it says), or a span back from now: 15m, 6h, 2d")
    q.add_argument("--until", metavar="TIME", help="ISO time")
    q.add_argument("--ip", metavar="ADDR|CIDR", help="on any address column")
    q.add_argument("--text", help="case-insensitive text search (signature, category, detail; server name)")
    q.add_argument("--level", action="append", help="alerts: red, orange, yellow, blue (repeatable)")
    q.add_argument("--category", help="alerts: EVE category")
    q.add_argument("--detector", help="alerts: rule or a detector's name")
    q.add_argument("--status", help="alerts: triage status")
    q.add_argument("--where", action="append", default=[], metavar="COL<op>VALUE",
                   help="any column: = != > < >= <= ~ (contains) / (in CIDR); e.g. teid=4660, plane=N3")
    q.add_argument("--sort", metavar="[-]COLUMN", help="sort column, '-' for descending (default: newest first)")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--offset", type=int, default=0)
    q.add_argument("--by", default="talkers", help="top: talkers, destinations, ports, applications, planes")
    q.add_argument("--metric", default="bytes", help="top: bytes, flows, packets")
    q.add_argument("-n", type=int, default=10, help="top: how many")
    q.add_argument("--bucket", type=int, default=60, metavar="S", help="histogram: bucket width, seconds")
    q.add_argument("--columns", metavar="A,B,...", help="the columns of each row (default: a summary in text, "
                                                          "every column with --json)")
    q.add_argument("--json", action="store_true", help="JSON output: every column, and the total")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingest.store import Condition, Query, StoreError, open_store
    from ingest.store.api import ASSET_SCHEMA, SCHEMAS, column_list

    try:
        start, end = _time(args.since, True), _time(args.until, False)
        store = open_store(args.store)
        result: Any
        if args.what in ("top", "histogram", "mix"):
            if args.what == "top":
                result = store.top(args.by, args.metric, start, end, args.n)
            elif args.what == "mix":
                result = store.plane_mix(start, end)
            else:
                result = store.histogram(start, end, args.bucket)
            _print(result, None, args.json, len(result))
            return 0
        table = TABLE_OF.get(args.what, args.what)
        schema = ASSET_SCHEMA if table == "assets" else SCHEMAS[table]
        where = [_condition(w, schema, Condition) for w in args.where]
        if args.level:
            where.append(Condition("level", "in", args.level))
        for name in ("category", "detector", "status"):
            if getattr(args, name):
                where.append(Condition(name, "eq", getattr(args, name)))
        # only what is shown is read (a flow has 72 columns)
        shown = list(column_list(args.columns)) or (None if args.json else COLUMNS.get(args.what))
        page = store.search(Query(table, where, ip=args.ip, text=args.text, start=start, end=end, sort=args.sort,
                                  limit=args.limit, offset=args.offset, columns=tuple(shown or ())))
        _print(page.rows, shown, args.json, page.total)
        return 0
    except (StoreError, ValueError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2


def _condition(text: str, schema: pa.Schema, cls: Any) -> Any:
    m = _WHERE.match(text)
    if not m:
        raise ValueError(f"--where {text!r}: expected COLUMN<op>VALUE with op one of = != > < >= <= ~ /")
    name, op, raw = m.groups()
    if name not in schema.names:
        raise ValueError(f"--where {text!r}: no column {name!r}")
    kind = schema.field(name).type
    value: Any = raw
    if pa.types.is_integer(kind):
        value = int(raw, 0)
    elif pa.types.is_floating(kind):
        value = float(raw)
    elif pa.types.is_timestamp(kind):
        value = _time(raw, True)
    return cls(name, _OPS[op], value)


def _time(text: str | None, since: bool) -> dt.datetime | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if m and since:
        span = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=span)
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _print(rows: list[dict[str, Any]], columns: list[str] | None, as_json: bool, total: int) -> None:
    if as_json:
        print(json.dumps({"total": total, "rows": rows}, ensure_ascii=False, default=str))
        return
    if not rows:
        print("(none)")
        return
    columns = columns or list(rows[0])
    text = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [min(max(len(c), *(len(t[i]) for t in text)), 48) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in text:
        print("  ".join(v[:w].ljust(w) for v, w in zip(t, widths)))
    if total > len(rows):
        print(f"({len(rows)} of {total}; --offset/--limit for more)")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
