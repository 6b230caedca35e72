"""YAML files read at every start (rules, trend thresholds, tactics, feed settings), parsed once per content.

Importing PyYAML costs ~12 ms (it compiles its regular expressions) and parsing the bundled files
~8 ms more, at every start of a replay with detection, before its decoders can begin.  So the
documents of a file are kept beside this module's bytecode, keyed by the file's text (as Python
keeps bytecode by its source): an unchanged file is read back with neither.  A file whose values
marshal cannot hold (YAML timestamps) is parsed every time.  libyaml parses when it is installed.
:func:`kept_value` and :func:`keep_value` keep other start-up work the same way (the compiled rule validator).
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

CACHE_DIR = Path(__file__).with_name("__pycache__")
#: kept files beyond which the oldest go (each edit of a rule file leaves one behind)
MAX_KEPT = 256
_PREFIX = "yaml."


class YamlError(ValueError):
    """Not valid YAML: ``line`` (1-based) and ``problem`` say where and what."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


@dataclass
class Documents:
    """The documents of one YAML text."""

    values: list[Any]  # each document's value (None for an empty one)
    lines: list[int]  # the 1-based line each document starts on
    nodes: list[yaml.Node] | None = None  # when parsed, not kept: the lines of values inside a document


def parse(text: str) -> Documents:
    """Every document of ``text``, with its node; raises :class:`YamlError`."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    nodes: list[yaml.Node] = []
    values: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node said there is one
            nodes.append(node)
            values.append(loader.construct_document(node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(mark.line + 1 if mark is not None else 1, getattr(exc, "problem", None) or str(exc)) from None
    finally:
        loader.dispose()
    return Documents(values, [int(n.start_mark.line) + 1 for n in nodes], nodes)


def kept(text: str, salt: str = "") -> Documents | None:
    """The documents of ``text`` as :func:`keep` left them with the same ``salt``, or None."""
    try:
        values, lines = kept_value(_name(text, salt))
    except (ValueError, TypeError):  # not there, or not what keep left
        return None
    return Documents(values, lines)


def keep(text: str, docs: Documents, salt: str = "") -> None:
    """Keep the documents of ``text`` for :func:`kept`.

    ``salt``: what else they were checked against (a reader that validates them keeps only valid ones,
    under its schema's key, and then need not validate them again)."""
    if keep_value(_name(text, salt), (docs.values, docs.lines)):
        old = sorted(CACHE_DIR.glob(f"{_PREFIX}*.marshal"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - MAX_KEPT)]:
            p.unlink(missing_ok=True)


def kept_value(name: str) -> Any:
    """The value :func:`keep_value` kept under ``name`` (whose key must say what it depends on), or None
    (never kept, or damaged: never trusted)."""
    try:
        return marshal.loads((CACHE_DIR / f"{name}.marshal").read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None


def keep_value(name: str, value: Any) -> bool:
    """Keep ``value`` (what marshal holds: code, numbers, text, containers) under ``name``, whole or not at all;
    False where it cannot (a value marshal cannot hold, a read-only installation: the work is redone)."""
    try:
        blob = marshal.dumps(value)
        CACHE_DIR.mkdir(exist_ok=True)
        path = CACHE_DIR / f"{name}.marshal"
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(blob)
        partial.replace(path)  # whoever else writes it at the same time
    except (ValueError, OSError):
        return False
    return True


def load(path: Path) -> Any:
    """The one document of a YAML file (None if empty), kept across starts; raises OSError, :class:`YamlError`."""
    text = path.read_text(encoding="utf-8")
    docs = kept(text)
    if docs is None:
        docs = parse(text)
        if len(docs.values) > 1:
            raise YamlError(docs.lines[1], "expected a single document, found another")
        keep(text, docs)
    return docs.values[0] if docs.values else None


def _name(text: str, salt: str) -> str:
    return _PREFIX + hashlib.sha256(text.encode() + b"\0" + salt.encode() + importlib.util.MAGIC_NUMBER).hexdigest()[:24]


__all__ = ["Documents", "YamlError", "keep", "keep_value", "kept", "kept_value", "load", "parse"]
