"""Situational posture (态势): a score per scope, and a warning level that changes with hysteresis and a reason.

**Scopes**: the whole network; each of our assets an alert involves (its target
and its source, when an internal address or a network function); each network
function (``nf:ROLE@IP``, from the NF inventory); each 5G slice (the S-NSSAI of
the alert's session).

**Score** (0-100) of a scope, re-evaluated as event time advances::

    weight(alert) = score/100 x criticality x 0.5 ** (age / half_life)     (at most 0.95)
    posture       = 100 x (1 - product over the scope's alerts of (1 - weight))

so one red alert (score ~85) on a network function makes 85, several weaker
ones add up towards 100 without passing it, and everything fades with a
half-life (default 1 h; alerts older than six half-lives are forgotten).  An
alert's age runs from its ``last_seen``.  **Criticality**: 1.0 for a network
function (any NF-inventory role) or an industrial device (the alert's target
port is Modbus 502, S7 102, DNP3 20000 or EtherNet/IP 44818), 0.6 for other
hosts; a slice and the network take the highest criticality among the assets
of each alert.  **Exposure** findings are alerts of the ``liaowang.exposure``
rules (cleartext credentials, exposed management): they count like any alert.

**Level**: red from 85, orange from 65, yellow from 40, blue from 15, else
normal.  It rises as soon as the score reaches a higher threshold, and falls
only when the score has dropped ``margin`` (10) below the current level's
threshold and the level has been held at least ``hold_s`` (5 min), so a score
hovering at a threshold does not make the level flap.  Every change is a row
with its reason: what raised it (the alert that weighs most), or that the
alerts aged out.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from detection.detectors.base import private
from detection.inventory import NfInventory
from sensors.schema import Field, arrow_schema

THRESHOLDS = [(85.0, "red"), (65.0, "orange"), (40.0, "yellow"), (15.0, "blue")]
POSTURE_LEVELS = ("normal", "blue", "yellow", "orange", "red")
OT_PORTS = {502, 102, 20000, 44818}
NF_CRITICALITY, OT_CRITICALITY, HOST_CRITICALITY = 1.0, 1.0, 0.6
MAX_WEIGHT = 0.95

POSTURE_SCHEMA_VERSION = 1
POSTURE_FIELDS: list[Field] = [
    Field("scope", pa.string(), "network, asset:IP, nf:ROLE@IP or slice:SNSSAI"),
    Field("kind", pa.string(), "network, asset, nf or slice"),
    Field("updated", pa.timestamp("ns", tz="UTC"), "event time of this evaluation"),
    Field("score", pa.float64(), "0-100 (see detection/posture.py)"),
    Field("level", pa.string(), "warning level with hysteresis: red, orange, yellow, blue or normal"),
    Field("alerts", pa.uint32(), "alerts still weighing on it"),
    Field("top_alert", pa.string(), "the alert that weighs most: alert id"),
    Field("top_signature", pa.string(), "its signature"),
    Field("reason", pa.string(), "why the level is what it is (its last change)"),
]
POSTURE_SCHEMA = arrow_schema(POSTURE_FIELDS, "posture", POSTURE_SCHEMA_VERSION)
POSTURE_CHANGE_FIELDS: list[Field] = [
    Field("change_id", pa.string(), "deterministic: hash of scope, time and new level"),
    Field("ts", pa.timestamp("ns", tz="UTC"), "event time of the change"),
    Field("scope", pa.string(), "see posture.scope"),
    Field("kind", pa.string(), "see posture.kind"),
    Field("from_level", pa.string(), "level before"),
    Field("to_level", pa.string(), "level after"),
    Field("score", pa.float64(), "score at the change"),
    Field("alert_id", pa.string(), "the alert that raised it (null when alerts aged out)"),
    Field("reason", pa.string(), "why, in words: 'score 87.0 >= 85 (red): <signature> <src> -> <dst>' or "
          "'score 52.0 < 55 (orange threshold 65 - margin 10) for 300 s: alerts aged'"),
]
POSTURE_CHANGE_SCHEMA = arrow_schema(POSTURE_CHANGE_FIELDS, "posture_changes", POSTURE_SCHEMA_VERSION)


def level_of(score: float) -> str:
    return next((name for floor, name in THRESHOLDS if score >= floor), "normal")


def threshold_of(level: str) -> float:
    return next((floor for floor, name in THRESHOLDS if name == level), 0.0)


@dataclass
class _Weight:
    alert_id: str
    signature: str
    ts_ns: int
    base: float  # score/100 x criticality
    text: str  # src -> dst, for reasons


@dataclass
class _Scope:
    kind: str
    alerts: dict[str, _Weight] = field(default_factory=dict)
    level: str = "normal"
    since_ns: int = 0
    score: float = 0.0
    reason: str = ""
    updated_ns: int = 0
    reported: float | None = None  # the score of its last row


class PostureTracker:
    """Alerts (as they come, any batching) and event time -> posture rows and level changes."""

    def __init__(self, half_life_s: float = 3600.0, margin: float = 10.0, hold_s: float = 300.0,
                 inventory: NfInventory | None = None) -> None:
        self.half_life_ns = int(half_life_s * 1e9)
        self.margin = margin
        self.hold_ns = int(hold_s * 1e9)
        self.inventory = inventory if inventory is not None else NfInventory()
        self._scopes: dict[str, _Scope] = {}
        self.watermark_ns = -(1 << 62)

    def update(self, alerts: pa.Table, watermark_ns: int | None) -> tuple[pa.Table, pa.Table]:
        """New alerts and the event time reached -> (posture rows of the scopes that changed, level changes)."""
        if alerts.num_rows:
            columns = ["alert_id", "last_seen", "signature", "score", "src_ip", "dst_ip", "dst_port", "session"]
            rows = alerts.select(columns)
            rows = rows.set_column(1, "last_seen", rows.column("last_seen").cast(pa.int64()))
            # internal addresses (RFC 1918, 6598, 4193...), judged for the whole table at once
            rows = rows.append_column("src_internal", pa.array(private(rows.column("src_ip")))) \
                .append_column("dst_internal", pa.array(private(rows.column("dst_ip"))))
            for a in sorted(rows.to_pylist(), key=lambda r: (r["last_seen"], r["alert_id"])):
                self._add(a)
                self.watermark_ns = max(self.watermark_ns, a["last_seen"])
        if watermark_ns is not None:
            self.watermark_ns = max(self.watermark_ns, watermark_ns)
        return self._evaluate()

    def table(self) -> pa.Table:
        """Every scope's current posture."""
        return self._rows(list(self._scopes))

    # -- internals ------------------------------------------------------------------

    def _add(self, a: dict[str, Any]) -> None:
        src, dst = a["src_ip"], a["dst_ip"]
        dst_roles, src_roles = self.inventory.roles(dst), self.inventory.roles(src)
        ot = (a["dst_port"] or 0) in OT_PORTS
        targets: list[tuple[str, str, float]] = []  # (scope, kind, criticality)
        if dst and (dst_roles or a["dst_internal"]):  # our assets: an internet host attacked is not ours to grade
            crit = NF_CRITICALITY if dst_roles else OT_CRITICALITY if ot else HOST_CRITICALITY
            targets.append((f"asset:{dst}", "asset", crit))
            targets += [(f"nf:{role}@{dst}", "nf", NF_CRITICALITY) for role in sorted(dst_roles)]
        if src and (src_roles or a["src_internal"]):  # an internal host acting: compromised or misused
            crit = NF_CRITICALITY if src_roles else HOST_CRITICALITY
            targets.append((f"asset:{src}", "asset", crit))
            targets += [(f"nf:{role}@{src}", "nf", NF_CRITICALITY) for role in sorted(src_roles)]
        top = max((c for _, _, c in targets), default=HOST_CRITICALITY)
        session = json.loads(a["session"]) if a["session"] else {}
        targets.append(("network", "network", top))
        if session.get("snssai"):
            targets.append((f"slice:{session['snssai']}", "slice", top))
        for scope, kind, crit in targets:
            s = self._scopes.get(scope)
            if s is None:
                s = self._scopes[scope] = _Scope(kind=kind)
            s.alerts[a["alert_id"]] = _Weight(a["alert_id"], a["signature"], a["last_seen"],
                                              float(a["score"] or 0.0) / 100.0 * crit, f"{src} -> {dst}")

    def _weights(self, s: _Scope) -> tuple[dict[str, float], str | None]:
        """Each alert's weight now, and the heaviest alert (ties: the greater id)."""
        weights = {k: min(MAX_WEIGHT, w.base * math.pow(0.5, max(self.watermark_ns - w.ts_ns, 0) / self.half_life_ns))
                   for k, w in s.alerts.items()}
        return weights, max(weights, key=lambda k: (weights[k], k), default=None)

    def _evaluate(self) -> tuple[pa.Table, pa.Table]:
        now = self.watermark_ns
        horizon = now - 6 * self.half_life_ns
        changed: list[str] = []
        changes: list[dict[str, Any]] = []
        for name, s in list(self._scopes.items()):
            for alert_id in [k for k, w in s.alerts.items() if w.ts_ns < horizon]:
                del s.alerts[alert_id]
            weights, top = self._weights(s)
            score = round(100.0 * (1.0 - math.prod(1.0 - v for v in weights.values())), 1)
            new = s.level
            raised = level_of(score)
            if POSTURE_LEVELS.index(raised) > POSTURE_LEVELS.index(s.level):
                new = raised
                w = s.alerts[top] if top else None
                reason = (f"score {score:.1f} >= {threshold_of(new):.0f} ({new}): "
                          + (f"{w.signature} {w.text}" if w else "alerts"))
            elif s.level != "normal" and score < threshold_of(s.level) - self.margin \
                    and now - s.since_ns >= self.hold_ns:
                new = level_of(score)
                reason = (f"score {score:.1f} < {threshold_of(s.level) - self.margin:.0f} ({s.level} threshold "
                          f"{threshold_of(s.level):.0f} - margin {self.margin:.0f}) after {s.level} for "
                          f"{(now - s.since_ns) / 1e9:.0f} s: alerts aged")
            moved = new != s.level
            if moved:
                changes.append({
                    "change_id": hashlib.blake2b(f"{name}|{now}|{new}".encode(), digest_size=8).hexdigest(),
                    "ts": now, "scope": name, "kind": s.kind, "from_level": s.level, "to_level": new, "score": score,
                    "alert_id": top if POSTURE_LEVELS.index(new) > POSTURE_LEVELS.index(s.level) else None,
                    "reason": reason})
                s.level, s.since_ns, s.reason = new, now, reason
            s.score, s.updated_ns = score, now
            # rows for what moved by a point or more (decay moves every score a little, every batch)
            if moved or s.reported is None or abs(score - s.reported) >= 1.0 or (score == 0.0 and s.reported != 0.0):
                changed.append(name)
                s.reported = score
            elif not s.alerts and s.level == "normal" and s.reported == 0.0:
                del self._scopes[name]  # nothing weighs on it any more, and its last row said so
        rows = self._rows(changed)
        return rows, (pa.Table.from_pylist(changes, schema=POSTURE_CHANGE_SCHEMA) if changes
                      else POSTURE_CHANGE_SCHEMA.empty_table())

    def _rows(self, names: list[str]) -> pa.Table:
        rows = []
        for name in sorted(names):
            s = self._scopes[name]
            _, top = self._weights(s)
            rows.append({"scope": name, "kind": s.kind, "updated": s.updated_ns, "score": s.score, "level": s.level,
                         "alerts": len(s.alerts), "top_alert": top,
                         "top_signature": s.alerts[top].signature if top else None, "reason": s.reason})
        return pa.Table.from_pylist(rows, schema=POSTURE_SCHEMA) if rows else POSTURE_SCHEMA.empty_table()


__all__ = ["POSTURE_CHANGE_SCHEMA", "POSTURE_SCHEMA", "PostureTracker", "level_of"]
