"""The hunt query language: what an analyst types into the Hunt page's search box.

    ip=10.45.0.0/16 dst_port=443 sni~example plane=N3 bytes>100000 "cobalt strike"

Terms are AND-ed.  A term is ``field OP value`` with OP one of ``= != > >= < <=``
and ``~`` (contains); ``a,b,c`` after ``=`` means any of them; a CIDR after
``=`` on an address means "inside".  ``ip=`` matches any address column (inner
or tunnel), a bare word or a quoted phrase is free text (SNI, application).
Field names are the flow columns (``liaowang query flows``) or the short names
in :data:`ALIASES`.  ``supi=`` / ``subscriber=`` take a pseudonymous subscriber
token and find its sessions' flows (the caller resolves :attr:`Hunt.subscriber`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

import pyarrow as pa

from ingest.store.api import SCHEMAS, TABLES, Condition, StoreError

ALIASES = {
    "port": "dst_port", "sport": "src_port", "dport": "dst_port", "src": "src_ip", "dst": "dst_ip",
    "sni": "server_name", "dns": "server_name", "host": "server_name", "app": "application_hint",
    "proto": "ip_proto", "bytes": "bidirectional_bytes", "packets": "bidirectional_packets",
    "duration_ms": "bidirectional_duration_ms", "session": "session_id", "community": "community_id",
    "gnb": "tunnel_src_ip", "upf": "tunnel_dst_ip",
}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58, "sctp": 132}
_TERM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(!=|>=|<=|=|>|<|~)(.*)$", re.S)
_OPS = {"=": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "~": "contains"}


class HuntError(StoreError):
    """A query the analyst must fix: the message says where."""


@dataclass
class Hunt:
    where: list[Condition] = field(default_factory=list)
    ip: str | None = None
    text: str | None = None
    subscriber: str | None = None


def parse(query: str, table: str = "flows") -> Hunt:
    try:
        words = shlex.split(query)
    except ValueError as e:
        raise HuntError(f"unbalanced quotes in {query!r}") from e
    schema = SCHEMAS[table]
    hunt, text = Hunt(), []
    for word in words:
        m = _TERM.match(word)
        if not m:
            text.append(word)
            continue
        name, op, raw = m.group(1).lower(), m.group(2), m.group(3)
        if name in ("supi", "subscriber") and op == "=":
            hunt.subscriber = raw
            continue
        if name == "ip" and op == "=":
            try:
                ipaddress.ip_network(raw, strict=False)
            except ValueError as e:
                raise HuntError(f"{word}: not an address or CIDR") from e
            hunt.ip = raw
            continue
        column = ALIASES.get(name, name)
        if column not in schema.names:
            raise HuntError(f"{word}: no field {name!r} (fields: {', '.join(schema.names[:12])}, … or "
                            f"{', '.join(sorted(ALIASES))})")
        hunt.where.append(_condition(table, column, _OPS[op], raw, schema.field(column).type))
    hunt.text = " ".join(text) or None
    return hunt


def _condition(table: str, column: str, op: str, raw: str, type_: pa.DataType) -> Condition:
    if column in TABLES[table].ip_columns and op == "eq" and "/" in raw:
        return Condition(column, "cidr", raw)
    if op == "eq" and "," in raw:
        return Condition(column, "in", [_value(column, v, type_) for v in raw.split(",") if v])
    if op == "contains":
        return Condition(column, "contains", raw)
    return Condition(column, op, _value(column, raw, type_))


def _value(column: str, raw: str, type_: pa.DataType) -> object:
    if column == "ip_proto" and raw.lower() in PROTOCOLS:
        return PROTOCOLS[raw.lower()]
    if pa.types.is_integer(type_):
        try:
            return int(raw, 0)  # 0x1f for TEIDs
        except ValueError as e:
            raise HuntError(f"{column}: {raw!r} is not a number") from e
    if pa.types.is_floating(type_):
        try:
            return float(raw)
        except ValueError as e:
            raise HuntError(f"{column}: {raw!r} is not a number") from e
    return raw
