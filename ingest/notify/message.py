"""What a notification says: one :class:`Message` per alert, incident, escalation or digest, in zh-CN or English.

Channels render it (``channels.py``); the wording lives here so that every
channel says the same thing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

LEVEL_WORDS = {
    "zh-CN": {"red": "红色预警", "orange": "橙色预警", "yellow": "黄色预警", "blue": "蓝色预警"},
    "en": {"red": "RED", "orange": "ORANGE", "yellow": "YELLOW", "blue": "BLUE"},
}
KIND_WORDS = {
    "zh-CN": {"alert": "告警", "incident": "事件", "escalation": "升级：事件未确认", "digest": "汇总",
              "trend": "趋势预警"},
    "en": {"alert": "Alert", "incident": "Incident", "escalation": "Escalation: incident not acknowledged",
           "digest": "Digest", "trend": "Trend warning"},
}
LABELS = {
    "zh-CN": {"level": "等级", "score": "评分", "first_seen": "首次发现", "last_seen": "最近发现", "src": "源",
              "dst": "目的", "category": "类别", "tactics": "阶段", "assets": "受影响资产", "subscribers": "用户(假名)",
              "slices": "切片", "id": "编号", "unacked_min": "未确认(分钟)", "held": "限流期间合并的通知",
              "series": "指标", "observed": "当前值", "forecast_peak": "预测峰值", "threshold": "阈值",
              "expected_at": "预计越限时间"},
    "en": {"level": "Level", "score": "Score", "first_seen": "First seen", "last_seen": "Last seen", "src": "Source",
           "dst": "Target", "category": "Category", "tactics": "Stages", "assets": "Affected assets",
           "subscribers": "Subscribers (pseudonyms)", "slices": "Slices", "id": "ID", "unacked_min": "Unacknowledged (min)",
           "held": "Notifications held back by the rate limit", "series": "Series", "observed": "Now",
           "forecast_peak": "Forecast peak", "threshold": "Threshold", "expected_at": "Expected to cross at"},
}
#: CEF severity (0-10) of each level
CEF_SEVERITY = {"red": 10, "orange": 8, "yellow": 5, "blue": 3}


@dataclass
class Message:
    kind: str  # alert, incident, trend, escalation, digest
    subject_id: str  # alert_id, incident_id or warning_id (a digest: its first message's)
    level: str
    title: str
    score: float = 0.0
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # src, dst, category, tactics, assets, ... (label keys)
    signature_id: int = 0  # alerts: the rule's sid (CEF signature id)
    covers: list[Message] = field(default_factory=list)  # a digest: the messages it stands for

    def headline(self, language: str) -> str:
        level = LEVEL_WORDS[language].get(self.level, self.level)
        kind = KIND_WORDS[language][self.kind]
        if self.kind == "digest":
            return (f"【瞭望 {level}】{kind}：{len(self.covers)} 条通知" if language == "zh-CN"
                    else f"[Liaowang {level}] {kind}: {len(self.covers)} notifications")
        return f"【瞭望 {level}】{kind}：{self.title}" if language == "zh-CN" else f"[Liaowang {level}] {kind}: {self.title}"

    def lines(self, language: str) -> list[tuple[str, str]]:
        """(label, value) pairs for the body, in display order."""
        words = LABELS[language]
        if self.kind == "digest":
            return [(words["held"], str(len(self.covers)))] + [
                (LEVEL_WORDS[language].get(m.level, m.level), m.title) for m in self.covers[:20]]
        rows = [(words["level"], LEVEL_WORDS[language].get(self.level, self.level)),
                (words["score"], f"{self.score:g}"),
                (words["first_seen"], _when(self.first_seen_ns)), (words["last_seen"], _when(self.last_seen_ns))]
        for key, value in self.details.items():
            if value not in (None, "", []):
                rows.append((words.get(key, key), ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
        rows.append((words["id"], self.subject_id))
        return rows

    def text(self, language: str) -> str:
        return "\n".join([self.headline(language), *(f"{k}: {v}" for k, v in self.lines(language))])

    def markdown(self, language: str) -> str:
        return "\n".join([f"### {self.headline(language)}", *(f"- **{k}**: {v}" for k, v in self.lines(language))])

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": "liaowang", "kind": self.kind, "id": self.subject_id, "level": self.level,
                               "title": self.title, "score": self.score, "first_seen": _when(self.first_seen_ns),
                               "last_seen": _when(self.last_seen_ns), **self.details}
        if self.covers:
            out["covers"] = [m.as_json() for m in self.covers]
        return out


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ns else ""


def alert_message(row: dict[str, Any]) -> Message:
    """A message for one alert row (``detection.alerts.ALERT_SCHEMA``, timestamps as ns integers)."""
    src = row.get("tunnel_src_ip") or row.get("src_ip")
    dst = row.get("tunnel_dst_ip") or row.get("dst_ip")
    return Message(kind="alert", subject_id=row["alert_id"], level=row["level"], title=row["signature"],
                   score=float(row.get("score") or 0), first_seen_ns=int(row["first_seen"] or 0),
                   last_seen_ns=int(row["last_seen"] or 0), signature_id=int(row.get("signature_id") or 0),
                   details={"category": row.get("category"), "src": src, "dst": dst})


def incident_message(row: dict[str, Any]) -> Message:
    """A message for one incident row (``detection.incidents.INCIDENT_SCHEMA``, timestamps as ns integers)."""
    return Message(kind="incident", subject_id=row["incident_id"], level=row["level"], title=row["title"],
                   score=float(row.get("score") or 0), first_seen_ns=int(row["first_seen"] or 0),
                   last_seen_ns=int(row["last_seen"] or 0),
                   details={"tactics": list(row.get("tactics") or []), "assets": list(row.get("affected_assets") or [])[:10],
                            "subscribers": list(row.get("subscribers") or [])[:10], "slices": list(row.get("slices") or [])})


#: a forecast is a warning (yellow); the series having crossed its threshold is graver (orange)
TREND_LEVELS = {"forecast": "yellow", "crossed": "orange"}


def trend_message(row: dict[str, Any]) -> Message:
    """A message for one trend warning (``detection.trend.TREND_WARNING_SCHEMA``, timestamps as ns integers)."""
    return Message(kind="trend", subject_id=row["warning_id"], level=TREND_LEVELS[row["kind"]], title=row["reason"],
                   first_seen_ns=int(row["ts"] or 0), last_seen_ns=int(row["ts"] or 0),
                   details={"series": row["series"], "observed": f"{row['observed']:g}",
                            "forecast_peak": f"{row['forecast_peak']:g}", "threshold": f"{row['threshold']:g}",
                            "expected_at": _when(int(row["expected_at"] or 0))})


def escalation_message(of: Message, unacked_s: float) -> Message:
    return Message(kind="escalation", subject_id=of.subject_id, level=of.level, title=of.title, score=of.score,
                   first_seen_ns=of.first_seen_ns, last_seen_ns=of.last_seen_ns,
                   details={**of.details, "unacked_min": f"{unacked_s / 60:.0f}"})


def digest_message(held: list[Message]) -> Message:
    worst = min(held, key=lambda m: list(CEF_SEVERITY).index(m.level) if m.level in CEF_SEVERITY else 9)
    return Message(kind="digest", subject_id=held[0].subject_id, level=worst.level, title="", covers=list(held),
                   score=max(m.score for m in held))


__all__ = ["CEF_SEVERITY", "Message", "alert_message", "digest_message", "escalation_message", "incident_message"]
