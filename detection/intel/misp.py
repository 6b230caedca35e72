"""MISP JSON: one event (``{"Event": ...}``), a list of them, or a REST search answer
(``{"response": [...]}``); attributes of the event and of its objects.

Only attributes flagged ``to_ids`` are imported (MISP's own mark of what is fit
for detection), unless the feed sets ``all_attributes``.  Deleted attributes are
skipped.  The level comes from the event's ``threat_level_id`` (1 high, 2
medium, 3 low), else from the feed.  An attribute's ``last_seen`` is not an
expiry; the feed's ``max_age_days`` is (counted from the attribute's
``timestamp``).
"""

from __future__ import annotations

import json
from typing import Any

from detection.intel.indicators import Parsed, timestamp_ns

#: MISP attribute type -> (indicator type, which part of a composite value "a|b")
TYPES: dict[str, list[tuple[str, int]]] = {
    "ip-src": [("ip", 0)], "ip-dst": [("ip", 0)], "ip-src|port": [("ip", 0)], "ip-dst|port": [("ip", 0)],
    "domain": [("domain", 0)], "hostname": [("domain", 0)], "domain|ip": [("domain", 0), ("ip", 1)],
    "hostname|port": [("domain", 0)], "url": [("url", 0)], "link": [("url", 0)],
    "ja3-fingerprint-md5": [("ja3", 0)], "ja4-fingerprint": [("ja4", 0)], "ja4": [("ja4", 0)],
    "md5": [("md5", 0)], "sha1": [("sha1", 0)], "sha256": [("sha256", 0)],
    "filename|md5": [("md5", 1)], "filename|sha1": [("sha1", 1)], "filename|sha256": [("sha256", 1)],
}
THREAT_LEVELS = {"1": "high", "2": "medium", "3": "low"}


def _events(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "response" in data:
        data = data["response"]
    items = data if isinstance(data, list) else [data]
    events = [item.get("Event", item) for item in items if isinstance(item, dict)]
    if not events or not all(isinstance(e, dict) and ("Attribute" in e or "Object" in e or "info" in e)
                             for e in events):
        raise ValueError("not a MISP event: no Event with attributes")
    return events


def parse(text: str, default_level: str, max_age_ns: int | None = None, all_attributes: bool = False) -> Parsed:
    out = Parsed(max_age_ns=max_age_ns)
    for event in _events(json.loads(text)):
        level = THREAT_LEVELS.get(str(event.get("threat_level_id", "")), default_level)
        name = str(event.get("info", ""))
        attributes = list(event.get("Attribute") or [])
        for obj in event.get("Object") or []:
            attributes += list(obj.get("Attribute") or [])
        for a in attributes:
            if a.get("deleted"):
                out.skip("deleted")
                continue
            if not (all_attributes or a.get("to_ids")):
                out.skip("not to_ids")
                continue
            kinds = TYPES.get(str(a.get("type")))
            if not kinds:
                out.skip(f"type {a.get('type')}")
                continue
            parts = str(a.get("value", "")).split("|")
            for kind, part in kinds:
                if part < len(parts):
                    out.add(kind, parts[part], level, name, dated_ns=timestamp_ns(a.get("timestamp")))
    return out
