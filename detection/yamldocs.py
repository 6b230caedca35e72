"""YAML files read at every start (rules, trend thresholds, tactics), parsed once per content.

Importing PyYAML costs ~12 ms (it compiles its regular expressions) and parsing the bundled files
~8 ms more, at every start of a replay with detection, before its decoders can begin.  So the
documents of a file are kept beside this module's bytecode, keyed by the file's text (as Python
keeps bytecode by its source): an unchanged file is read back with neither.  A file whose values
marshal cannot hold (YAML timestamps) is parsed every time.  libyaml parses when it is installed.
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
        values, lines = marshal.loads(_path(text, salt).read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return Documents(values, lines)


def keep(text: str, docs: Documents, salt: str = "") -> None:
    """Keep the documents of ``text`` for :func:`kept` (whole or not at all; not where nothing can be written).

    ``salt``: what else they were checked against (a reader that validates them keeps only valid ones,
    under its schema's key, and then need not validate them again)."""
    try:
        blob = marshal.dumps((docs.values, docs.lines))
    except ValueError:  # a value marshal cannot hold: parsed at every start
        return
    path = _path(text, salt)
    try:
        CACHE_DIR.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(blob)
        partial.replace(path)  # whoever else writes it at the same time
        old = sorted(CACHE_DIR.glob(f"{_PREFIX}*.marshal"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - MAX_KEPT)]:
            p.unlink(missing_ok=True)
    except OSError:  # a read-only installation: parsed at every start
        pass


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


def _path(text: str, salt: str) -> Path:
    key = hashlib.sha256(text.encode() + b"\0" + salt.encode() + importlib.util.MAGIC_NUMBER).hexdigest()[:24]
    return CACHE_DIR / f"{_PREFIX}{key}.marshal"


__all__ = ["Documents", "YamlError", "keep", "kept", "load", "parse"]
