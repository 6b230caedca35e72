"""Rules as data: what a loaded rule is (the YAML format is in ``rule.schema.json``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

#: Sigma levels -> the four national early-warning grades (red is the most severe)
LEVEL_GRADES = {"critical": "red", "high": "orange", "medium": "yellow", "low": "blue", "informational": "blue"}
#: Sigma levels -> Suricata EVE alert severity (1 is the most severe)
LEVEL_SEVERITY = {"critical": 1, "high": 1, "medium": 2, "low": 3, "informational": 4}
SOURCES = ("packets", "flows")
MODIFIERS = ("equals", "in", "contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte",
             "bits_all", "bits_any", "bits_none", "not")


#: signature ids derived from rule UUIDs live in 9,000,000..9,999,999 (Suricata's local range)
SID_BASE = 9_000_000


def derived_signature_id(rule_id: str) -> int:
    return SID_BASE + uuid.UUID(rule_id).int % 1_000_000


@dataclass(frozen=True)
class Condition:
    """One field test of a selection: ``field|modifier: values`` (values are OR-ed, ``all`` AND-s them)."""

    field: str
    modifier: str
    values: tuple[Any, ...]
    match_all: bool = False


@dataclass(frozen=True)
class Aggregate:
    """Count (or count distinct ``field`` values) of matching events per ``by`` group within ``window_s``."""

    function: str = "count"  # count | distinct_count
    field: str | None = None
    by: tuple[str, ...] = ("src_ip", "dst_ip")
    window_s: float = 60.0
    threshold: int = 1

    @property
    def hop_ns(self) -> int:
        """Windows hop by half their length; events are counted per hop ("bucket")."""
        return max(int(self.window_s * 1e9) // 2, 1)


@dataclass
class Rule:
    id: str
    title: str
    status: str
    level: str
    source: str
    selections: dict[str, list[list[Condition]]]  # name -> OR of AND-ed condition lists
    condition: str
    aggregate: Aggregate
    description: str = ""
    references: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    category: str = "Potentially Bad Traffic"
    detector: str = "rule"
    #: a field whose value at the earliest event is the alert's ``detail`` (a masked finding, a banner)
    detail: str | None = None
    signature_id: int = 0
    path: str = ""
    line: int = 0

    @property
    def grade(self) -> str:
        return LEVEL_GRADES[self.level]

    @property
    def severity(self) -> int:
        return LEVEL_SEVERITY[self.level]

    def fields(self) -> set[str]:
        """Every column the rule reads."""
        used = {c.field for alts in self.selections.values() for conds in alts for c in conds}
        used.update(self.aggregate.by)
        if self.aggregate.field:
            used.add(self.aggregate.field)
        if self.detail:
            used.add(self.detail)
        return used
