"""The notification settings in force, as rows the console can show (the store's ``notify_routes`` table).

Analysts need to see who is told about what, and where each message goes, without seeing the keys that let
anyone post to the duty group: a channel's target is described with its secrets masked (URL query values,
token-like path segments, user info, passwords, signing secrets) before it leaves the notifier's process.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa

from ingest.notify.config import Channel, NotifyConfig
from sensors.schema import Field, arrow_schema

MASK = "***"
#: path segments that look like keys (robot hook ids, tokens): long runs of letters, digits, '-' and '_'
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{20,}")

CHANNEL = pa.struct([("name", pa.string()), ("type", pa.string()), ("target", pa.string()),
                     ("language", pa.string()), ("signed", pa.bool_())])
STEP = pa.struct([("after_min", pa.float64()), ("channels", pa.list_(pa.string()))])
NOTIFY_ROUTE_SCHEMA_VERSION = 1
NOTIFY_ROUTE_FIELDS: list[Field] = [
    Field("route", pa.string(), "the route's name"),
    Field("position", pa.uint16(), "its place in the file, from 0"),
    Field("loaded_at", pa.timestamp("ns", tz="UTC"), "when the settings in force were read"),
    Field("source", pa.string(), "the settings file"),
    Field("file_mtime", pa.timestamp("ns", tz="UTC"), "its modification time then: the settings' version (the rows"
          " of a removed route keep an older one; the console shows the latest version's routes)"),
    Field("kinds", pa.list_(pa.string()), "alert, incident, trend"),
    Field("levels", pa.list_(pa.string()), "red, orange, yellow, blue"),
    Field("categories", pa.list_(pa.string()), "alert categories (incidents: tactics; trend: series); empty: any"),
    Field("assets", pa.list_(pa.string()), "networks (asset groups resolved); empty: any"),
    Field("notify", pa.list_(pa.string()), "the channels of its first notice"),
    Field("escalate", pa.list_(STEP), "escalation steps of an unacknowledged red/orange incident: minutes after"
          " its first notice, and the channels"),
    Field("channels", pa.list_(CHANNEL), "every channel it may use: name, type, target with secrets masked,"
          " language, whether messages are signed (robots with a secret; null: not a robot)"),
    Field("dedup_s", pa.float64(), "a subject reaches a channel at most once in this long"),
    Field("rate_per_minute", pa.float64(), "messages per channel and minute before a digest"),
    Field("error", pa.string(), "why the last re-read of the file failed (these settings stay in force), else null"),
]
NOTIFY_ROUTE_SCHEMA = arrow_schema(NOTIFY_ROUTE_FIELDS, "notify_routes", NOTIFY_ROUTE_SCHEMA_VERSION)


def masked_url(url: str) -> str:
    """``url`` without what would let a reader post to it: user info, query values, token-like path segments."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    path = "/".join(MASK if _TOKEN.fullmatch(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def describe_target(channel: Channel) -> str:
    """Where a channel sends, readable and safe to show: no keys, tokens or passwords."""
    if channel.type == "syslog":
        return f"{channel.protocol}://{channel.host}:{channel.port or 514}"
    if channel.type == "email":
        to = ", ".join(channel.recipients)
        return f"smtp://{channel.host}:{channel.port or 587} {channel.sender} → {to}"
    return masked_url(channel.url)


def settings_table(config: NotifyConfig, source: str, loaded_at_ns: int | None = None, mtime_ns: int | None = None,
                   error: str | None = None) -> pa.Table:
    """One row per route of ``config`` (``notify_routes``), channel targets masked."""
    loaded = (loaded_at_ns if loaded_at_ns is not None else time.time_ns()) // 1000 * 1000  # µs, as every reader
    version = (mtime_ns if mtime_ns is not None else loaded) // 1000 * 1000

    def channel(name: str) -> dict[str, object]:
        c = config.channels[name]
        return {"name": name, "type": c.type, "target": describe_target(c), "language": c.language,
                "signed": bool(c.secret) if c.type in ("dingtalk", "feishu") else None}

    rows = [{"route": r.name, "position": i, "loaded_at": loaded, "source": source,
             "file_mtime": version, "kinds": list(r.kinds),
             "levels": list(r.levels), "categories": list(r.categories), "assets": [str(n) for n in r.networks],
             "notify": list(r.channels),
             "escalate": [{"after_min": s.after_s / 60.0, "channels": list(s.channels)} for s in r.escalate],
             "channels": [channel(n) for n in dict.fromkeys([*r.channels, *(c for s in r.escalate for c in s.channels)])],
             "dedup_s": config.dedup_s, "rate_per_minute": config.rate_per_minute, "error": error}
            for i, r in enumerate(config.routes)]
    return pa.Table.from_pylist(rows, schema=NOTIFY_ROUTE_SCHEMA)
