"""Response playbooks (处置预案): per kind of attack, the checklist a case gets (``rules/playbooks/*.yml``).

A playbook applies to an incident when any of its alerts matches it: the
alert's signature contains one of ``match.signatures`` (case-insensitive), its
tactic is in ``match.tactics`` or its category in ``match.categories``.  The
``default`` playbook (triage, scope, contain, report, review) applies to every
case.  A step is known by ``playbook/step`` ids, so a checked step stays checked
when the playbook file is edited around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detection.rules.loader import BUNDLED_RULES

BUNDLED_PLAYBOOKS = BUNDLED_RULES / "playbooks"
LANGUAGES = ("zh-CN", "en")


class PlaybookError(Exception):
    """A playbook file that cannot be used: names the file and the setting."""


@dataclass(frozen=True)
class Step:
    key: str  # playbook id / step id
    text: dict[str, str]  # language -> what to do


@dataclass(frozen=True)
class Playbook:
    id: str
    title: dict[str, str]
    steps: tuple[Step, ...]
    signatures: tuple[str, ...] = ()
    tactics: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    default: bool = False

    def matches(self, signature: str, tactic: str, category: str) -> bool:
        lowered = signature.lower()
        return (any(s.lower() in lowered for s in self.signatures) or tactic in self.tactics
                or category in self.categories)


def load_playbooks(directory: Path = BUNDLED_PLAYBOOKS) -> list[Playbook]:
    """Every playbook in ``directory`` (``*.yml``, several per file), the default first."""
    books: list[Playbook] = []
    for path in sorted(Path(directory).glob("*.yml")):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            raise PlaybookError(f"{path}: {e}") from e
        for i, doc in enumerate(docs):
            books.append(_playbook(doc, f"{path}[{i}]"))
    ids = [b.id for b in books]
    if len(set(ids)) != len(ids):
        raise PlaybookError(f"{directory}: playbook ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return sorted(books, key=lambda b: not b.default)


def _playbook(doc: Any, where: str) -> Playbook:
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise PlaybookError(f"{where}: a playbook needs an id")
    title = doc.get("title")
    if not isinstance(title, dict) or set(title) != set(LANGUAGES):
        raise PlaybookError(f"{where}.title: zh-CN and en expected")
    steps = []
    for j, s in enumerate(doc.get("steps") or []):
        if not isinstance(s, dict) or not isinstance(s.get("id"), str) or not all(isinstance(s.get(lang), str)
                                                                                   for lang in LANGUAGES):
            raise PlaybookError(f"{where}.steps[{j}]: id, zh-CN and en expected")
        steps.append(Step(f"{doc['id']}/{s['id']}", {lang: s[lang] for lang in LANGUAGES}))
    if not steps:
        raise PlaybookError(f"{where}.steps: a playbook needs steps")
    match = doc.get("match") or {}
    if not isinstance(match, dict) or set(match) - {"signatures", "tactics", "categories"}:
        raise PlaybookError(f"{where}.match: signatures, tactics and categories expected")
    if not match and not doc.get("default"):
        raise PlaybookError(f"{where}.match: a playbook that is not the default needs a match")
    signatures, tactics, categories = (tuple(str(v) for v in match.get(k) or [])
                                       for k in ("signatures", "tactics", "categories"))
    return Playbook(doc["id"], dict(title), tuple(steps), signatures, tactics, categories, bool(doc.get("default")))


def applicable(playbooks: Iterable[Playbook], incident: dict[str, Any],
               alerts: Iterable[dict[str, Any]]) -> list[Playbook]:
    """The playbooks an incident's alerts call for (its stages give each signature's tactic), the default first."""
    tactic_of = {sig: stage["tactic"] for stage in incident.get("stages") or [] for sig in stage["signatures"]}
    seen = [(a.get("signature") or "", tactic_of.get(a.get("signature") or "", ""), a.get("category") or "")
            for a in alerts]
    seen += [(sig, tactic, "") for sig, tactic in tactic_of.items()]
    return [b for b in playbooks if b.default or any(b.matches(*s) for s in seen)]
