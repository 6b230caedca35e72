"""Alerts: the ``alerts.parquet`` schema and alert rows built from rule episodes."""

from __future__ import annotations

import ipaddress
import json
import math

import pyarrow as pa

from detection.flows.community import community_id
from detection.rules.hits import TUPLE_FIELDS
from detection.rules.model import Rule
from detection.rules.windows import TUPLE, Episode
from sensors.schema import Field, arrow_schema

ALERT_SCHEMA_VERSION = 1
ALERT_FIELDS: list[Field] = [
    Field("alert_id", pa.string(), "deterministic: hash of rule, group and first window (same input, same id)"),
    Field("first_seen", pa.timestamp("ns", tz="UTC"), "first event of the episode"),
    Field("last_seen", pa.timestamp("ns", tz="UTC"), "last event of the episode"),
    Field("level", pa.string(), "early-warning grade: red, orange, yellow or blue"),
    Field("signature_id", pa.uint32(), "EVE signature id (the rule's sid)"),
    Field("signature", pa.string(), "the rule's title"),
    Field("category", pa.string(), "EVE alert category"),
    Field("severity", pa.uint8(), "EVE severity, 1 (highest) to 4"),
    Field("rule_id", pa.string(), "the rule's UUID"),
    Field("rule_level", pa.string(), "the rule's Sigma level"),
    Field("detector", pa.string(), "what raised it: rule"),
    Field("score", pa.float64(), "0-100: the level's base, plus up to 20 for how far the peak exceeds the threshold"),
    Field("tags", pa.list_(pa.string()), "ATT&CK and FiGHT technique tags"),
    Field("event_count", pa.uint64(), "events in the episode's firing windows"),
    Field("window_count", pa.uint32(), "firing windows in the episode"),
    Field("peak", pa.uint64(), "the largest count (or distinct count) in one window"),
    Field("group", pa.string(), "the rule's aggregate.by values: field=value,field=value"),
    *TUPLE_FIELDS,
    Field("community_id", pa.string(), "Community ID v1 of the first event's 5-tuple"),
    Field("evidence", pa.string(), "JSON: events, peak, function, field, threshold, window_s, windows, group, samples"),
    Field("session", pa.string(), "JSON: the 5G/4G session of the alert's tunnel or UE address (session_id,"
          " pseudonymous subscriber, pdu_session_id, dnn, snssai, gnb_ip, ue_ip, upf_ip, state), null if none"),
]
ALERT_SCHEMA = arrow_schema(ALERT_FIELDS, "alerts", ALERT_SCHEMA_VERSION)
LEVEL_BASE_SCORE = {"critical": 80.0, "high": 60.0, "medium": 40.0, "low": 20.0, "informational": 10.0}


def score(rule: Rule, peak: int) -> float:
    """The rule level's base score, plus up to 20 for how far the peak exceeds the threshold."""
    over = max(peak, 1) / max(rule.aggregate.threshold, 1)
    return round(min(100.0, LEVEL_BASE_SCORE[rule.level] + min(20.0, 10.0 * math.log10(max(over, 1.0)))), 1)


def _community_id(t: dict[str, object]) -> str | None:
    """Of the first event's 5-tuple (ICMP type and code are not in hits: ports stand in, as 0)."""
    try:
        src, dst = ipaddress.ip_address(str(t["src_ip"])), ipaddress.ip_address(str(t["dst_ip"]))
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    proto = int(t["ip_proto"] or 0)  # type: ignore[call-overload]
    sport, dport = int(t["src_port"] or 0), int(t["dst_port"] or 0)  # type: ignore[call-overload]
    return community_id(src.packed, dst.packed, proto, sport, dport, sport, dport)


def alert_table(episodes: list[Episode], rules: list[Rule]) -> pa.Table:
    rows = []
    for ep in episodes:
        rule = rules[ep.rule]
        t = ep.first
        evidence = {
            "events": ep.events, "peak": ep.peak, "function": rule.aggregate.function, "field": rule.aggregate.field,
            "threshold": rule.aggregate.threshold, "window_s": rule.aggregate.window_s, "windows": ep.windows,
            "group": dict(kv.split("=", 1) for kv in ep.group.split(",") if "=" in kv),
            "sample_flow_ids": ep.samples,
        }
        rows.append({
            "alert_id": ep.alert_id(rule.id, rule.aggregate.hop_ns), "first_seen": ep.first_ts, "last_seen": ep.last_ts,
            "level": rule.grade, "signature_id": rule.signature_id, "signature": rule.title, "category": rule.category,
            "severity": rule.severity, "rule_id": rule.id, "rule_level": rule.level, "detector": rule.detector,
            "score": score(rule, ep.peak), "tags": rule.tags, "event_count": ep.events, "window_count": ep.windows,
            "peak": ep.peak, "group": ep.group, **{k: t.get(k) for k in TUPLE},
            "community_id": _community_id(t) if t.get("src_ip") else None,
            "evidence": json.dumps(evidence, separators=(",", ":"), ensure_ascii=False),
        })
    if not rows:
        return ALERT_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=ALERT_SCHEMA).sort_by([("first_seen", "ascending"),
                                                                     ("alert_id", "ascending")])
