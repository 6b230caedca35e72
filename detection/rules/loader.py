"""Load rule files: YAML -> validated :class:`Rule` objects, errors naming file and line."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detection import yamldocs
from detection.rules.compiler import check_rule
from detection.rules.model import Aggregate, Condition, Rule, derived_signature_id

if TYPE_CHECKING:  # imported where a rule file is parsed: a flow meter reads none, kept files need none
    import yaml

SCHEMA_PATH = Path(__file__).with_name("rule.schema.json")
BUNDLED_RULES = Path(__file__).resolve().parents[2] / "rules"
BUNDLED_TACTICS = BUNDLED_RULES / "correlation" / "tactics.yml"
#: folders of rules/ that hold what other parts read (tactics of techniques, trend thresholds, playbooks), not rules
NOT_RULES = ("correlation", "forecast", "playbooks")


class RuleError(Exception):
    """A rule file that cannot be used; the message starts with ``file:line:``."""


@functools.cache
def rule_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def load_rules(paths: list[Path] | None = None) -> list[Rule]:
    """Rules from files and directories (``*.yml``/``*.yaml``, recursively); None: the bundled set."""
    files: list[Path] = []
    for p in [BUNDLED_RULES] if paths is None else paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yml", ".yaml")
                                and not set(NOT_RULES) & set(f.relative_to(p).parts)))
        elif p.exists():
            files.append(p)
        else:
            raise RuleError(f"{p}: no such rule file or directory")
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    sids: dict[int, Rule] = {}
    for f in files:
        for rule in load_file(f):
            if rule.id in seen:
                other = seen[rule.id]
                raise RuleError(f"{rule.path}:{rule.line}: duplicate rule id {rule.id} "
                                f"(first in {other.path}:{other.line})")
            if rule.signature_id in sids:
                other = sids[rule.signature_id]
                raise RuleError(f"{rule.path}:{rule.line}: signature id {rule.signature_id} already used by "
                                f"{other.path}:{other.line}; set a distinct 'sid'")
            seen[rule.id], sids[rule.signature_id] = rule, rule
            rules.append(rule)
    return rules


def load_file(path: Path) -> list[Rule]:
    """All rules of one file (several YAML documents may be separated by ``---``).

    A file's documents are kept once all its rules loaded (:mod:`detection.yamldocs`, under the schema's
    key): an unchanged file is neither parsed nor validated again at the next start.
    """
    text = path.read_text(encoding="utf-8")
    docs = yamldocs.kept(text, _schema_key())
    valid = docs is not None
    if docs is None:
        try:
            docs = yamldocs.parse(text)
        except yamldocs.YamlError as exc:
            raise RuleError(f"{path}:{exc.line}: not valid YAML: {exc.problem}") from None
    rules = []
    for i, (doc, line) in enumerate(zip(docs.values, docs.lines)):
        if doc is None:
            continue
        if not valid and not _accepted(doc):
            err = _first_error(doc)
            if err is not None:
                assert docs.nodes is not None  # parsed here: kept documents were valid
                where = _line_of(docs.nodes[i], list(err.absolute_path)) or line
                field = "/".join(str(p) for p in err.absolute_path) or "(rule)"
                raise RuleError(f"{path}:{where}: {field}: {err.message}")
        try:
            rules.append(_build(doc, str(path), line))
        except ValueError as exc:
            raise RuleError(f"{path}:{line}: {exc}") from None
    if not valid:
        yamldocs.keep(text, docs, _schema_key())
    return rules


@functools.cache
def _schema_key() -> str:
    """What kept rule documents were validated against."""
    return hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()


@functools.cache
def _fast_validator() -> Any:
    """The rule schema compiled to Python by fastjsonschema (jsonschema's import alone costs ~140 ms at every
    start).  It knows drafts up to 7: the schema uses no keyword that 2020-12 changed, and
    tests/test_detection.py checks that both validators agree.

    Generating and compiling the validator takes ~20 ms, at the start of every replay, before the decoders can
    begin: the compiled code is kept beside the bytecode (:func:`detection.yamldocs.keep_value`), keyed by the
    schema, the fastjsonschema version and the bytecode format; where that cannot be written it is rebuilt.
    """
    import fastjsonschema

    definition = {**rule_schema(), "$schema": "http://json-schema.org/draft-07/schema#"}
    key = "rule_validator." + hashlib.sha256(json.dumps(definition, sort_keys=True).encode()
                                             + fastjsonschema.VERSION.encode() + importlib.util.MAGIC_NUMBER
                                             ).hexdigest()[:16]
    try:
        name, code = yamldocs.kept_value(key)
    except (ValueError, TypeError):  # not kept yet, or damaged
        source = fastjsonschema.compile_to_code(definition)
        name = re.search(r"^def (\w+)\(", source, re.MULTILINE).group(1)  # type: ignore[union-attr]
        code = compile(source, f"<{SCHEMA_PATH.name} validator>", "exec")
        yamldocs.keep_value(key, (name, code))
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # fastjsonschema's own output for our schema, run as fastjsonschema.compile runs it
    return namespace[name]


def _accepted(doc: Any) -> bool:
    """Does the fast validator accept ``doc``?  (Only a rejection is explained, by :func:`_first_error`.)"""
    import fastjsonschema

    try:
        _fast_validator()(doc)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def _first_error(doc: Any) -> Any:
    """The first schema violation of ``doc`` by jsonschema (draft 2020-12, the schema's own; all errors ordered
    by where they are, so the message names the first place to fix), or None."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(rule_schema()).iter_errors(doc),
                    key=lambda e: list(e.absolute_path))
    return errors[0] if errors else None


def _line_of(node: yaml.Node, path: list[Any]) -> int | None:
    """The line of the YAML node at ``path`` (mapping keys and sequence indexes), 1-based."""
    import yaml

    for step in path:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == step]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            break
    return int(node.start_mark.line) + 1


def _build(doc: dict[str, Any], path: str, line: int) -> Rule:
    detection = dict(doc["detection"])
    condition = detection.pop("condition")
    selections = {name: [_conditions(alt) for alt in (body if isinstance(body, list) else [body])]
                  for name, body in detection.items()}
    agg = doc.get("aggregate", {})
    function = agg.get("function", "count")
    if function == "distinct_count" and not agg.get("field"):
        raise ValueError("aggregate: distinct_count needs a 'field'")
    aggregate = Aggregate(function=function, field=agg.get("field"), by=tuple(agg.get("by", ("src_ip", "dst_ip"))),
                          window_s=float(agg.get("window_s", 60.0)), threshold=int(agg.get("threshold", 1)))
    rule_id = str(doc["id"]).lower()
    tags = [str(t) for t in doc.get("tags", [])]
    rule = Rule(
        id=rule_id, title=doc["title"], status=doc["status"], level=doc["level"], source=doc["logsource"]["source"],
        selections=selections, condition=condition, aggregate=aggregate, description=doc.get("description", ""),
        references=list(doc.get("references", [])), tags=tags,
        category=doc.get("category", "Potentially Bad Traffic"), detail=doc.get("detail"),
        signature_id=int(doc.get("sid") or derived_signature_id(rule_id)), path=path, line=line,
    )
    check_rule(rule)  # fields exist, modifiers fit their types, the condition parses
    return rule


def _conditions(selection: dict[str, Any]) -> list[Condition]:
    out = []
    for key, value in selection.items():
        field, *mods = key.split("|")
        match_all = "all" in mods
        mods = [m for m in mods if m != "all"]
        negate = "not" in mods
        mods = [m for m in mods if m != "not"]
        if len(mods) > 1:
            raise ValueError(f"{key}: one modifier per field (besides 'all' and 'not')")
        modifier = mods[0] if mods else "equals"
        values = tuple(value) if isinstance(value, list) else (value,)
        cond = Condition(field, modifier, values, match_all)
        out.append(Condition(field, "not", (cond,)) if negate else cond)
    return out


def apply_overrides(rules: list[Rule], overrides: dict[str, dict[str, Any]]) -> list[Rule]:
    """Rules as an administrator tuned them in the console (``rule-overrides.json``): disabled ones dropped,
    aggregation threshold and window replaced."""
    out = []
    for rule in rules:
        o = overrides.get(rule.id, {})
        if o.get("enabled") is False:
            continue
        if "threshold" in o or "window_s" in o:
            rule = dataclasses.replace(rule, aggregate=dataclasses.replace(
                rule.aggregate, threshold=int(o.get("threshold", rule.aggregate.threshold)),
                window_s=float(o.get("window_s", rule.aggregate.window_s))))
        out.append(rule)
    return out


def rule_source(rule: Rule) -> str:
    """The YAML document a rule was loaded from (files may hold several, separated by ``---``)."""
    lines = Path(rule.path).read_text(encoding="utf-8").splitlines()
    start = rule.line - 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1  # the comment above the rule belongs to it
    end = next((i for i in range(rule.line, len(lines)) if lines[i].strip() == "---"), len(lines))
    return "\n".join(lines[start:end]).strip() + "\n"
