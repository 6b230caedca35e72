"""STIX 2.1 bundles: ``indicator`` objects with STIX patterns.

A pattern is imported when it is one comparison, or comparisons joined by OR
(``[ipv4-addr:value = '198.51.100.7' OR domain-name:value = 'evil.example']``):
each gives an indicator.  AND and FOLLOWEDBY patterns need several observations
together, which one packet does not show: they are skipped, and counted.
Revoked indicators are skipped; ``valid_from`` and ``valid_until`` are kept.
The level comes from ``confidence`` (85+ high, 50+ medium, else low) when it is
given, else from the feed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from detection.intel.indicators import Parsed, timestamp_ns

_COMPARISON = re.compile(
    r"(?P<path>[a-z0-9-]+:[A-Za-z0-9_.'\-]+)\s*(?P<op>=|ISSUBSET|!=|MATCHES|LIKE|IN|>=|<=|>|<)\s*"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\([^)]*\)|\S+)")
_COMPOUND = re.compile(r"\b(AND|FOLLOWEDBY|REPEATS|WITHIN|START|STOP)\b")


def _type_of(path: str) -> str | None:
    obj, _, prop = path.partition(":")
    prop = prop.lower().replace("'", "")
    if obj in ("ipv4-addr", "ipv6-addr") and prop == "value":
        return "ip"
    if obj == "network-traffic" and prop in ("dst_ref.value", "src_ref.value"):
        return "ip"
    if obj == "domain-name" and prop == "value":
        return "domain"
    if obj == "url" and prop == "value":
        return "url"
    if obj == "file" and prop.startswith("hashes."):
        algo = prop.split(".", 1)[1].replace("-", "").lower()
        return {"md5": "md5", "sha1": "sha1", "sha256": "sha256"}.get(algo)
    if "ja3" in obj or "ja3" in prop:
        return "ja3"
    if "ja4" in obj or "ja4" in prop:
        return "ja4"
    return "sni" if "sni" in prop else None


def _level(obj: dict[str, Any], default: str) -> str:
    confidence = obj.get("confidence")
    if not isinstance(confidence, int):
        return default
    return "high" if confidence >= 85 else "medium" if confidence >= 50 else "low"


def parse(text: str, default_level: str, max_age_ns: int | None = None) -> Parsed:
    data = json.loads(text)
    objects = data.get("objects", []) if isinstance(data, dict) else data
    if not isinstance(objects, list):
        raise ValueError("not a STIX bundle: no objects list")
    out = Parsed(max_age_ns=max_age_ns)
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("type") != "indicator":
            continue
        if obj.get("revoked"):
            out.skip("revoked")
            continue
        if obj.get("pattern_type", "stix") != "stix":
            out.skip(f"pattern type {obj.get('pattern_type')}")
            continue
        pattern = str(obj.get("pattern", ""))
        if _COMPOUND.search(_COMPARISON.sub("", pattern)):
            out.skip("compound pattern (AND/FOLLOWEDBY)")
            continue
        comparisons = list(_COMPARISON.finditer(pattern))
        if not comparisons:
            out.skip("unreadable pattern")
            continue
        level, name = _level(obj, default_level), str(obj.get("name") or obj.get("id", ""))
        start, end = timestamp_ns(obj.get("valid_from")), timestamp_ns(obj.get("valid_until"))
        dated = timestamp_ns(obj.get("modified")) or start
        for m in comparisons:
            kind, op = _type_of(m["path"]), m["op"]
            if kind is None:
                out.skip(f"object {m['path'].split(':')[0]}")
                continue
            if op not in ("=", "ISSUBSET", "IN"):
                out.skip(f"operator {op}")
                continue
            raw = m["value"]
            values = re.findall(r"'((?:[^'\\]|\\.)*)'", raw) if raw.startswith("(") else [raw.strip("'")]
            for value in values:
                out.add(kind, value.replace("\\'", "'").replace("\\\\", "\\"), level, name, start, end, dated)
    return out
