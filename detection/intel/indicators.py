"""Indicators: what a feed says, normalised to one shape whatever its format.

An indicator is a (type, value) pair with the feed that gave it, a Sigma level
(which makes its alerts' grade), an optional validity window and a short name.
Values are normalised so that the matcher compares like with like: addresses and
networks as ``ipaddress`` text (``10.0.0.0/8``, ``2001:db8::1``), domains and
SNIs in lower case without a trailing dot, URLs without their scheme and with
a lower-case host, fingerprints and hashes in lower-case hex.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field

import pyarrow as pa

from sensors.schema import Field, arrow_schema

#: what the matcher compares, and with which packet columns
MATCHED_TYPES = {
    "ip": ("src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"),
    "domain": ("dns_qname", "tls_sni", "http_host"),  # the name or any subdomain of it
    "sni": ("tls_sni",),
    "url": ("http_host", "http_uri"),
    "ja3": ("tls_ja3",),
    "ja4": ("tls_ja4",),
}
#: imported and listed, but no column carries them (the sensor does not carve files)
STORED_TYPES = ("md5", "sha1", "sha256")
TYPES = (*MATCHED_TYPES, *STORED_TYPES)
LEVELS = ("critical", "high", "medium", "low")

INDICATOR_SCHEMA_VERSION = 1
INDICATOR_FIELDS: list[Field] = [
    Field("feed", pa.string(), "the feed's name in the intelligence configuration"),
    Field("type", pa.string(), "ip, domain, sni, url, ja3, ja4, md5, sha1 or sha256"),
    Field("value", pa.string(), "normalised: 10.0.0.0/8, evil.example, evil.example/path?q, lower-case hex"),
    Field("level", pa.string(), "Sigma level of its alerts: critical, high, medium or low"),
    Field("name", pa.string(), "what the feed calls it (STIX name, MISP event info, a list's comment)"),
    Field("valid_from", pa.timestamp("ns", tz="UTC"), "events before it do not match (null: always valid)"),
    Field("valid_until", pa.timestamp("ns", tz="UTC"), "events after it do not match: expiry (null: none)"),
]
INDICATOR_SCHEMA = arrow_schema(INDICATOR_FIELDS, "indicators", INDICATOR_SCHEMA_VERSION)

_HEX = re.compile(r"^[0-9a-f]+$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
_JA4 = re.compile(r"^[tqd][0-9a-z]{2}[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")
_HASH_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256"}


@dataclass
class Indicator:
    type: str
    value: str
    level: str
    name: str = ""
    valid_from_ns: int | None = None
    valid_until_ns: int | None = None


def normalise(kind: str, value: str) -> str:
    """``value`` as the matcher compares it; ValueError when it is not a ``kind``."""
    value = value.strip()
    if kind == "ip":
        if _V4.match(value):  # the common case, without ipaddress's objects (feeds hold 100,000s)
            return value
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    if kind in ("domain", "sni"):
        name = value.lower().rstrip(".")
        if name.startswith("*."):
            name = name[2:]
        if not _HOST.match(name):
            raise ValueError(f"not a domain name: {value!r}")
        return name
    if kind == "url":
        rest = value.split("://", 1)[1] if "://" in value else value
        host, slash, path = rest.partition("/")
        host = host.lower().rstrip(".")
        if not host:
            raise ValueError(f"not a URL: {value!r}")
        return f"{host}/{path}" if slash else f"{host}/"
    if kind == "ja4":
        text = value.lower()
        if not _JA4.match(text):
            raise ValueError(f"not a JA4 fingerprint: {value!r}")
        return text
    if kind in ("ja3", "md5", "sha1", "sha256"):
        text = value.lower()
        want = {"ja3": 32, "md5": 32, "sha1": 40, "sha256": 64}[kind]
        if len(text) != want or not _HEX.match(text):
            raise ValueError(f"not a {kind}: {value!r}")
        return text
    raise ValueError(f"unknown indicator type {kind!r}")


def guess_type(value: str) -> str | None:
    """The type of a bare value in a plain list, or None when it cannot be told (32 hex digits are
    a JA3 or an MD5: the feed must say which)."""
    text = value.strip().lower()
    try:
        normalise("ip", text)
        return "ip"
    except ValueError:
        pass
    if "://" in text or "/" in text:
        return "url"
    if _JA4.match(text):
        return "ja4"
    if _HEX.match(text) and len(text) in _HASH_LENGTHS:
        return None if len(text) == 32 else _HASH_LENGTHS[len(text)]
    if _HOST.match(text.rstrip(".")) and "." in text:
        return "domain"
    return None


@dataclass
class Parsed:
    """What a feed file gave: its indicators, and what was left out and why (reason -> count)."""

    indicators: list[Indicator] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    #: the feed's ``max_age_days``: an indicator with no expiry of its own expires this long after its date
    max_age_ns: int | None = None

    def table(self, feed: str) -> pa.Table:
        """The indicators as ``INDICATOR_SCHEMA`` rows of ``feed`` (a feed keeps its indicators so: compact)."""
        items = self.indicators
        return pa.table({"feed": pa.array([feed] * len(items), pa.string()),
                         "type": [i.type for i in items], "value": [i.value for i in items],
                         "level": [i.level for i in items], "name": [i.name for i in items],
                         "valid_from": pa.array([i.valid_from_ns for i in items], pa.int64()),
                         "valid_until": pa.array([i.valid_until_ns for i in items], pa.int64())}
                        ).cast(INDICATOR_SCHEMA)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(self, kind: str, value: str, level: str, name: str = "", valid_from_ns: int | None = None,
            valid_until_ns: int | None = None, dated_ns: int | None = None) -> None:
        """``dated_ns``: when the feed dated it (for ``max_age_ns``)."""
        if valid_until_ns is None and self.max_age_ns is not None and dated_ns is not None:
            valid_until_ns = dated_ns + self.max_age_ns
        try:
            self.indicators.append(Indicator(kind, normalise(kind, value), level, name, valid_from_ns,
                                             valid_until_ns))
        except ValueError:
            self.skip(f"malformed {kind}")


def timestamp_ns(text: str | int | float | None) -> int | None:
    """An RFC 3339 time (STIX) or seconds since the epoch (MISP) -> ns; None when absent or unreadable."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) or str(text).isdigit():
        return int(float(text) * 1e9)
    try:
        when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
