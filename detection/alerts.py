"""Alerts: the ``alerts.parquet`` schema and alert rows built from rule episodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from detection.flows.export import community_id
from detection.rules.model import Rule
from detection.rules.windows import Episode

ALERT_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),  # deterministic: same input, same id
        pa.field("first_seen", pa.timestamp("ns", tz="UTC")),
        pa.field("last_seen", pa.timestamp("ns", tz="UTC")),
        pa.field("level", pa.string()),  # early-warning grade: red / orange / yellow / blue
        pa.field("signature_id", pa.uint32()),
        pa.field("signature", pa.string()),
        pa.field("category", pa.string()),
        pa.field("severity", pa.uint8()),  # EVE: 1 (highest) .. 4
        pa.field("rule_id", pa.string()),
        pa.field("rule_level", pa.string()),  # Sigma level of the rule
        pa.field("detector", pa.string()),
        pa.field("score", pa.float64()),  # 0..100
        pa.field("tags", pa.list_(pa.string())),
        pa.field("event_count", pa.uint64()),  # events in the episode's firing windows
        pa.field("window_count", pa.uint32()),
        pa.field("peak", pa.uint64()),  # the largest count (or distinct count) in one window
        pa.field("group", pa.string()),
        pa.field("src_ip", pa.string()),
        pa.field("dst_ip", pa.string()),
        pa.field("src_port", pa.uint16()),
        pa.field("dst_port", pa.uint16()),
        pa.field("ip_proto", pa.uint8()),
        pa.field("teid", pa.uint32()),
        pa.field("tunnel_src_ip", pa.string()),
        pa.field("tunnel_dst_ip", pa.string()),
        pa.field("flow_id", pa.int64()),
        pa.field("community_id", pa.string()),
        pa.field("evidence", pa.string()),  # JSON: counts, window, threshold, group, sample flow ids
    ],
    metadata={"liaowang.schema": "alerts", "liaowang.version": "1"},
)
LEVEL_BASE_SCORE = {"critical": 80.0, "high": 60.0, "medium": 40.0, "low": 20.0, "informational": 10.0}


def score(rule: Rule, peak: int) -> float:
    """The rule level's base score, plus up to 20 for how far the peak exceeds the threshold."""
    over = max(peak, 1) / max(rule.aggregate.threshold, 1)
    return round(min(100.0, LEVEL_BASE_SCORE[rule.level] + min(20.0, 10.0 * math.log10(max(over, 1.0)))), 1)


def _community_id(t: dict[str, object]) -> str | None:
    import ipaddress

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
        hop_ns = max(int(rule.aggregate.window_s * 1e9) // 2, 1)
        t = ep.first
        evidence = {
            "events": ep.events, "peak": ep.peak, "function": rule.aggregate.function, "field": rule.aggregate.field,
            "threshold": rule.aggregate.threshold, "window_s": rule.aggregate.window_s, "windows": ep.windows,
            "group": dict(kv.split("=", 1) for kv in ep.group.split(",") if "=" in kv),
            "sample_flow_ids": ep.samples,
        }
        rows.append({
            "alert_id": ep.alert_id(rule.id, hop_ns), "first_seen": ep.first_ts, "last_seen": ep.last_ts,
            "level": rule.grade, "signature_id": rule.signature_id, "signature": rule.title, "category": rule.category,
            "severity": rule.severity, "rule_id": rule.id, "rule_level": rule.level, "detector": rule.detector,
            "score": score(rule, ep.peak), "tags": rule.tags, "event_count": ep.events, "window_count": ep.windows,
            "peak": ep.peak, "group": ep.group, **{k: t.get(k) for k in ("src_ip", "dst_ip", "src_port", "dst_port",
                                                                          "ip_proto", "teid", "tunnel_src_ip",
                                                                          "tunnel_dst_ip", "flow_id")},
            "community_id": _community_id(t) if t.get("src_ip") else None,
            "evidence": json.dumps(evidence, separators=(",", ":"), ensure_ascii=False),
        })
    if not rows:
        return ALERT_SCHEMA.empty_table()
    table = pa.Table.from_pylist(rows, schema=ALERT_SCHEMA)
    order = np.lexsort((table.column("alert_id").to_numpy(zero_copy_only=False),
                        table.column("first_seen").cast(pa.int64()).to_numpy()))
    return table.take(pa.array(order))
