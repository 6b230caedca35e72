"""Incidents: alerts correlated into stories, by the entity that acts in them and by time.

An alert's **actor** is what its rule counted per: the source host (``src_ip``,
or the outer ``tunnel_src_ip`` of a tunnel rule), and the subscriber of its 5G
session when there is one.  Rules that count per target only (a flood towards
one service, a storm towards one node) have no credible actor (their sources
are spoofed): their alerts are keyed on the target.  Alerts that share an actor
key belong to one incident while the incident is active: an alert more than
``max_gap_s`` after the incident's last one starts a new incident.  An alert
whose keys lead to two incidents merges them: the older one stays, and the other
is given once more with ``merged_into`` naming it, so every copy of it (a store,
a file) can drop it.

Each alert is a **stage** of the ATT&CK/FiGHT tactic its rule names
(``attack.<tactic>`` tags, else its techniques looked up in
``rules/correlation/tactics.yml``).  An incident lists its stages in the order
they began, so a scan, a brute force, a beacon and an exfiltration from one
host read as one story: discovery -> credential access -> command and control
-> exfiltration.

**Score** (0-100): the highest score of its alerts, plus 10 for each further
tactic the incident reached (a story that progresses is worse than its worst
step).  **Level**: red from 90, orange from 75, yellow from 55, else blue.
**State** starts as ``new``; analysts move it (investigating, contained,
closed) in the store.

``IncidentBuilder.update(alerts)`` takes alert tables in any batching and
returns the incidents they changed, as whole rows (the store replaces by
``incident_id``); the same alerts give the same incidents.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from detection import yamldocs
from detection.rules.loader import BUNDLED_TACTICS
from detection.rules.model import Rule
from sensors.schema import Field, arrow_schema

#: ATT&CK's tactics, in the order of its matrix (ICS tactics folded into the nearest)
TACTICS = ["reconnaissance", "resource_development", "initial_access", "execution", "persistence",
           "privilege_escalation", "defense_evasion", "credential_access", "discovery", "lateral_movement",
           "collection", "command_and_control", "exfiltration", "impact"]
UNKNOWN_TACTIC = "unclassified"
LEVELS = [(90.0, "red"), (75.0, "orange"), (55.0, "yellow"), (0.0, "blue")]
STATES = ("new", "investigating", "contained", "closed")
#: alert ids and assets an incident row lists at most (its counts stay exact)
MAX_LISTED = 200
ACTOR_COLUMNS = ("src_ip", "tunnel_src_ip")
TARGET_COLUMNS = ("dst_ip", "tunnel_dst_ip")

INCIDENT_SCHEMA_VERSION = 1
#: nested times are plain ns since the epoch: every store and JSON encoder takes integers alike
STAGE = pa.struct([("tactic", pa.string()), ("first_seen_ns", pa.int64()), ("last_seen_ns", pa.int64()),
                   ("alerts", pa.uint32()), ("signatures", pa.list_(pa.string()))])
INCIDENT_FIELDS: list[Field] = [
    Field("incident_id", pa.string(), "deterministic: hash of its first alert's id (same alerts, same incidents)"),
    Field("first_seen", pa.timestamp("ns", tz="UTC"), "first event of its first alert"),
    Field("last_seen", pa.timestamp("ns", tz="UTC"), "last event of its latest alert"),
    Field("level", pa.string(), "early-warning grade from the score: red, orange, yellow or blue"),
    Field("score", pa.float64(), "0-100: its highest alert score, plus 10 per further tactic reached"),
    Field("state", pa.string(), "new, investigating, contained or closed (set by analysts)"),
    Field("title", pa.string(), "who, and the stages: '10.0.0.66: discovery → credential_access → ...'"),
    Field("entities", pa.list_(pa.string()), "actor keys that tie its alerts: host:IP, subscriber:PSEUDONYM,"
          " target:IP (alerts counted per target only)"),
    Field("tactics", pa.list_(pa.string()), "its stages' tactics, in the order they began"),
    Field("stages", pa.list_(STAGE), "per tactic: first and last seen (ns since the epoch), alerts, signatures;"
          " in the order they began"),
    Field("alert_count", pa.uint32(), "alerts in it"),
    Field("alert_ids", pa.list_(pa.string()), f"its alerts, the first {MAX_LISTED}"),
    Field("affected_assets", pa.list_(pa.string()), f"addresses its alerts targeted, the first {MAX_LISTED}"),
    Field("subscribers", pa.list_(pa.string()), "pseudonymous subscribers of the sessions involved"),
    Field("slices", pa.list_(pa.string()), "S-NSSAIs of the sessions involved"),
    Field("merged_into", pa.string(), "'' while it stands alone; the incident it became part of, once merged"),
]
INCIDENT_SCHEMA = arrow_schema(INCIDENT_FIELDS, "incidents", INCIDENT_SCHEMA_VERSION)


def load_tactics(path: Path = BUNDLED_TACTICS) -> dict[str, str]:
    """Technique id -> tactic, from ``rules/correlation/tactics.yml``."""
    techniques = (yamldocs.load(path) or {}).get("techniques") or {}
    unknown = {t for t in techniques.values() if t not in TACTICS}
    if unknown:
        raise ValueError(f"{path}: unknown tactics {sorted(unknown)}")
    return {str(k).lower(): str(v) for k, v in techniques.items()}


def rule_tactic(rule: Rule, techniques: dict[str, str]) -> str:
    """The tactic a rule's alerts are a stage of: its furthest tactic tag, else its techniques' furthest."""
    tags = [t.lower() for t in rule.tags]
    named = [t.split(".", 1)[1] for t in tags if t.startswith("attack.") and t.split(".", 1)[1] in TACTICS]
    if not named:
        ids = [t.split(".", 1)[1] for t in tags if t.startswith(("attack.", "fight."))]
        named = [techniques[i] for i in ids if i in techniques]
        named += [techniques[i.split(".")[0]] for i in ids if i not in techniques and i.split(".")[0] in techniques]
    return max(named, key=TACTICS.index) if named else UNKNOWN_TACTIC


@dataclass
class _Stage:
    first_ns: int
    last_ns: int
    alerts: int = 0
    signatures: list[str] = field(default_factory=list)


@dataclass
class Incident:
    incident_id: str
    first_ns: int
    last_ns: int
    keys: set[str] = field(default_factory=set)
    stages: dict[str, _Stage] = field(default_factory=dict)
    alert_count: int = 0
    alert_ids: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    subscribers: set[str] = field(default_factory=set)
    slices: set[str] = field(default_factory=set)
    top_score: float = 0.0
    state: str = "new"
    merged_into: str = ""

    @property
    def score(self) -> float:
        reached = len({t for t in self.stages if t != UNKNOWN_TACTIC})
        return round(min(100.0, self.top_score + 10.0 * max(reached - 1, 0)), 1)

    @property
    def level(self) -> str:
        return next(name for floor, name in LEVELS if self.score >= floor)

    def ordered_stages(self) -> list[tuple[str, _Stage]]:
        return sorted(self.stages.items(), key=lambda kv: (kv[1].first_ns, TACTICS.index(kv[0])
                                                            if kv[0] in TACTICS else len(TACTICS)))

    def title(self) -> str:
        actors = sorted(k.split(":", 1)[1] for k in self.keys if k.startswith("host:")) or \
            sorted(k.split(":", 1)[1] for k in self.keys)
        who = ", ".join(actors[:3]) + (f" +{len(actors) - 3}" if len(actors) > 3 else "")
        return f"{who}: " + " → ".join(t for t, _ in self.ordered_stages())

    def row(self) -> dict[str, Any]:
        stages = self.ordered_stages()
        return {
            "incident_id": self.incident_id, "first_seen": self.first_ns, "last_seen": self.last_ns,
            "level": self.level, "score": self.score, "state": self.state, "title": self.title(),
            "entities": sorted(self.keys), "tactics": [t for t, _ in stages],
            "stages": [{"tactic": t, "first_seen_ns": s.first_ns, "last_seen_ns": s.last_ns, "alerts": s.alerts,
                        "signatures": s.signatures} for t, s in stages],
            "alert_count": self.alert_count, "alert_ids": self.alert_ids, "affected_assets": self.assets,
            "subscribers": sorted(self.subscribers), "slices": sorted(self.slices), "merged_into": self.merged_into,
        }


class IncidentBuilder:
    """Alerts -> incidents (see the module's doc).  ``rules``: every rule and detector rule that raises alerts."""

    def __init__(self, rules: list[Rule], max_gap_s: float = 6 * 3600.0, tactics: dict[str, str] | None = None) -> None:
        techniques = load_tactics() if tactics is None else tactics
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._rules = {r.id: (rule_tactic(r, techniques), tuple(r.aggregate.by)) for r in rules}
        self._incidents: dict[str, Incident] = {}
        self._owner: dict[str, str] = {}  # actor key -> incident id
        self._merged: list[Incident] = []  # merged away since the last update's rows
        self.watermark_ns = -(1 << 62)

    def update(self, alerts: pa.Table) -> pa.Table:
        """Alerts (any order within the table) -> the incidents they changed, as rows."""
        if not alerts.num_rows:
            return INCIDENT_SCHEMA.empty_table()
        columns = ["alert_id", "first_seen", "last_seen", "rule_id", "signature", "score", "group", "session",
                   *ACTOR_COLUMNS, *TARGET_COLUMNS]
        rows = alerts.select(columns)
        rows = rows.set_column(1, "first_seen", rows.column("first_seen").cast(pa.int64()))
        rows = rows.set_column(2, "last_seen", rows.column("last_seen").cast(pa.int64()))
        touched: set[str] = set()
        for a in sorted(rows.to_pylist(), key=lambda r: (r["first_seen"], r["alert_id"])):
            touched.add(self._add(a))
        merged, self._merged = self._merged, []
        changed = self._rows([self._incidents[i] for i in sorted(touched) if i in self._incidents] + merged)
        self._forget_idle()  # after the rows: an incident can end idle in the very update that changed it
        return changed

    def incidents(self) -> pa.Table:
        """Every incident still held (the active ones and those idle less than the gap)."""
        return self._rows(list(self._incidents.values()))

    # -- internals ------------------------------------------------------------------

    def _keys(self, a: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """The alert's actor keys, and its session's facts."""
        by = self._rules.get(a["rule_id"], (UNKNOWN_TACTIC, ()))[1]
        grouped = _group_values(a["group"])
        keys = [f"host:{grouped.get(c) or a[c]}" for c in ACTOR_COLUMNS if c in by and (grouped.get(c) or a[c])]
        session = json.loads(a["session"]) if a["session"] else {}
        if session.get("subscriber"):
            keys.append(f"subscriber:{session['subscriber']}")
        if not keys:  # counted per target only: its sources are not to be trusted
            target = next((grouped.get(c) or a[c] for c in TARGET_COLUMNS if grouped.get(c) or a[c]), None)
            keys.append(f"target:{target}" if target else f"alert:{a['alert_id']}")
        return keys, session

    def _add(self, a: dict[str, Any]) -> str:
        keys, session = self._keys(a)
        start, end = a["first_seen"], a["last_seen"]
        found = {self._owner[k] for k in keys if k in self._owner}
        live = sorted((self._incidents[i] for i in found
                       if i in self._incidents and start - self._incidents[i].last_ns <= self.max_gap_ns),
                      key=lambda inc: (inc.first_ns, inc.incident_id))
        if live:
            inc = live[0]
            for other in live[1:]:
                self._merge(inc, other)
        else:
            digest = hashlib.blake2b(a["alert_id"].encode(), digest_size=8).hexdigest()
            inc = Incident(incident_id=f"inc-{digest}", first_ns=start, last_ns=end)
            self._incidents[inc.incident_id] = inc
        inc.first_ns, inc.last_ns = min(inc.first_ns, start), max(inc.last_ns, end)
        inc.keys.update(keys)
        for k in keys:
            self._owner[k] = inc.incident_id
        tactic = self._rules.get(a["rule_id"], (UNKNOWN_TACTIC, ()))[0]
        stage = inc.stages.setdefault(tactic, _Stage(first_ns=start, last_ns=end))
        stage.first_ns, stage.last_ns, stage.alerts = min(stage.first_ns, start), max(stage.last_ns, end), \
            stage.alerts + 1
        if a["signature"] not in stage.signatures:
            stage.signatures.append(a["signature"])
        inc.alert_count += 1
        if len(inc.alert_ids) < MAX_LISTED:
            inc.alert_ids.append(a["alert_id"])
        for c in TARGET_COLUMNS:
            if a[c] and a[c] not in inc.assets and len(inc.assets) < MAX_LISTED and f"host:{a[c]}" not in inc.keys:
                inc.assets.append(a[c])
        if session.get("subscriber"):
            inc.subscribers.add(session["subscriber"])
        if session.get("snssai"):
            inc.slices.add(session["snssai"])
        inc.top_score = max(inc.top_score, float(a["score"] or 0.0))
        self.watermark_ns = max(self.watermark_ns, end)
        return inc.incident_id

    def _merge(self, into: Incident, other: Incident) -> None:
        into.first_ns, into.last_ns = min(into.first_ns, other.first_ns), max(into.last_ns, other.last_ns)
        into.keys |= other.keys
        for k in other.keys:
            self._owner[k] = into.incident_id
        for tactic, s in other.stages.items():
            mine = into.stages.setdefault(tactic, _Stage(first_ns=s.first_ns, last_ns=s.last_ns))
            mine.first_ns, mine.last_ns = min(mine.first_ns, s.first_ns), max(mine.last_ns, s.last_ns)
            mine.alerts += s.alerts
            mine.signatures += [x for x in s.signatures if x not in mine.signatures]
        into.alert_count += other.alert_count
        into.alert_ids = (into.alert_ids + other.alert_ids)[:MAX_LISTED]
        into.assets = (into.assets + [x for x in other.assets if x not in into.assets])[:MAX_LISTED]
        into.subscribers |= other.subscribers
        into.slices |= other.slices
        into.top_score = max(into.top_score, other.top_score)
        other.merged_into = into.incident_id
        self._merged.append(other)
        del self._incidents[other.incident_id]

    def _forget_idle(self) -> None:
        """Incidents idle for longer than the gap can grow no more: their rows were given when they changed."""
        idle = [i for i, inc in self._incidents.items() if self.watermark_ns - inc.last_ns > self.max_gap_ns]
        for i in idle:
            for k in self._incidents[i].keys:
                if self._owner.get(k) == i:
                    del self._owner[k]
            del self._incidents[i]

    @staticmethod
    def _rows(incidents: list[Incident]) -> pa.Table:
        if not incidents:
            return INCIDENT_SCHEMA.empty_table()
        rows = sorted((inc.row() for inc in incidents), key=lambda r: (r["first_seen"], r["incident_id"]))
        return pa.Table.from_pylist(rows, schema=INCIDENT_SCHEMA)  # times as ns integers: Arrow takes them


def _group_values(group: str | None) -> dict[str, str]:
    """An alert's ``group`` (field=value,field=value) as a dict."""
    out: dict[str, str] = {}
    for part in (group or "").split(","):
        name, _, value = part.partition("=")
        if name and value:
            out[name] = value
    return out


__all__ = ["INCIDENT_SCHEMA", "Incident", "IncidentBuilder", "STATES", "TACTICS", "load_tactics", "rule_tactic"]
