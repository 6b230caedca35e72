"""Threat-intelligence feeds: one YAML file names them; they are re-read when they change.

::

    feeds:
      - name: abuse-feodo           # named in every alert it raises
        path: feodo-ips.txt         # relative to this file
        format: plain               # stix | misp | plain (default: by the file's content)
        type: ip                    # plain lists: the type of untyped lines (default: guessed)
        level: high                 # Sigma level of its alerts (default: high); STIX confidence and
                                    # MISP threat levels override it per indicator
        max_age_days: 30            # an indicator without an expiry of its own expires this long after
                                    # its date (STIX modified, MISP timestamp, a plain list's file time)
        all_attributes: false       # MISP: also attributes not flagged to_ids
        enabled: true

:meth:`IntelFeeds.matcher` looks at the files' modification times at most once
per ``check_interval_s`` and rebuilds the matcher when one changed.  A file that
cannot be read at start is an :class:`IntelConfigError` (one message naming the
file and the setting); on a later reload the feed keeps its previous indicators
and its status says why.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detection import yamldocs
from detection.intel import misp, plain, stix
from detection.intel.indicators import INDICATOR_SCHEMA, LEVELS, Parsed
from detection.intel.matcher import IntelMatcher
from sensors.schema import Field, arrow_schema

FORMATS = ("stix", "misp", "plain")
DAY_NS = 86_400 * 1_000_000_000

FEED_STATUS_SCHEMA_VERSION = 1
FEED_STATUS_FIELDS: list[Field] = [
    Field("feed", pa.string(), "the feed's name"),
    Field("path", pa.string(), "its file"),
    Field("format", pa.string(), "stix, misp or plain"),
    Field("enabled", pa.bool_(), "false: listed, not matched"),
    Field("indicators", pa.uint32(), "indicators imported"),
    Field("by_type", pa.string(), "JSON: indicators per type"),
    Field("expired", pa.uint32(), "indicators whose expiry is past (wall clock at loading)"),
    Field("skipped", pa.string(), "JSON: entries left out, per reason"),
    Field("loaded_at", pa.timestamp("ns", tz="UTC"), "when its file was last read"),
    Field("file_mtime", pa.timestamp("ns", tz="UTC"), "its file's modification time then"),
    Field("error", pa.string(), "why the last reload failed (the previous indicators stay), else null"),
]
FEED_STATUS_SCHEMA = arrow_schema(FEED_STATUS_FIELDS, "intel_feeds", FEED_STATUS_SCHEMA_VERSION)


class IntelConfigError(Exception):
    """An intelligence configuration or feed that cannot be used at start."""


@dataclass(frozen=True)
class FeedConfig:
    name: str
    path: Path
    format: str | None = None
    type: str | None = None
    level: str = "high"
    max_age_days: float | None = None
    all_attributes: bool = False
    enabled: bool = True


@dataclass
class FeedState:
    config: FeedConfig
    table: pa.Table = field(default_factory=INDICATOR_SCHEMA.empty_table)  # its indicators
    skipped: dict[str, int] = field(default_factory=dict)
    format: str = ""
    mtime_ns: int = 0
    loaded_at_ns: int = 0
    error: str | None = None


def load_config(path: Path) -> list[FeedConfig]:
    try:
        data = yamldocs.load(path) or {}
    except (OSError, yamldocs.YamlError) as exc:
        raise IntelConfigError(f"{path}: {exc}") from None
    feeds = data.get("feeds") if isinstance(data, dict) else None
    if not isinstance(feeds, list):
        raise IntelConfigError(f"{path}: 'feeds' must be a list of feeds")
    out: list[FeedConfig] = []
    for i, f in enumerate(feeds):
        where = f"{path}: feeds[{i}]"
        if not isinstance(f, dict) or not f.get("name") or not f.get("path"):
            raise IntelConfigError(f"{where}: each feed needs a name and a path")
        unknown = set(f) - {"name", "path", "format", "type", "level", "max_age_days", "all_attributes", "enabled"}
        if unknown:
            raise IntelConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        if f.get("format") is not None and f["format"] not in FORMATS:
            raise IntelConfigError(f"{where}.format: {f['format']!r} is not one of {', '.join(FORMATS)}")
        if f.get("level", "high") not in LEVELS:
            raise IntelConfigError(f"{where}.level: {f.get('level')!r} is not one of {', '.join(LEVELS)}")
        age = f.get("max_age_days")
        if age is not None and (not isinstance(age, (int, float)) or age <= 0):
            raise IntelConfigError(f"{where}.max_age_days: must be a positive number of days")
        if str(f["name"]) in {c.name for c in out}:
            raise IntelConfigError(f"{where}.name: {f['name']!r} is used twice")
        feed_path = Path(os.path.expandvars(str(f["path"])))
        out.append(FeedConfig(name=str(f["name"]), path=feed_path if feed_path.is_absolute() else path.parent / feed_path,
                              format=f.get("format"), type=f.get("type"), level=f.get("level", "high"),
                              max_age_days=age, all_attributes=bool(f.get("all_attributes", False)),
                              enabled=bool(f.get("enabled", True))))
    return out


def sniff_format(text: str) -> str:
    """A JSON file with ``objects`` is STIX, other JSON is MISP, anything else a plain list.
    ValueError for a file that starts as JSON and is not (a half-written feed is not a list of names)."""
    head = text.lstrip()[:1]
    if head not in ("{", "["):
        return "plain"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    return "stix" if isinstance(data, dict) and ("objects" in data or data.get("type") == "bundle") else "misp"


def parse_feed(config: FeedConfig, text: str, mtime_ns: int) -> tuple[str, Parsed]:
    """(format, indicators); ValueError when the file is not what its format says."""
    fmt = config.format or sniff_format(text)  # ValueError for broken JSON
    age = int(config.max_age_days * DAY_NS) if config.max_age_days else None
    try:
        if fmt == "stix":
            return fmt, stix.parse(text, config.level, age)
        if fmt == "misp":
            return fmt, misp.parse(text, config.level, age, config.all_attributes)
        return fmt, plain.parse(text, config.level, age, config.type, mtime_ns)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a {fmt} feed: {exc}") from None


class IntelFeeds:
    """The feeds of one configuration file and the matcher over their indicators."""

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._config_mtime_ns = 0
        self._feeds: dict[str, FeedState] = {}
        self._matcher: IntelMatcher | None = None
        self._checked = 0.0
        self.reloads = 0
        self._load(initial=True)

    # workers and checkpoints get the file names; each process reads the feeds itself
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "check_interval_s": self.check_interval_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["check_interval_s"])  # type: ignore[misc]

    def matcher(self) -> IntelMatcher:
        """The current matcher (the files are checked for changes at most once per ``check_interval_s``)."""
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self._checked = now
            self._load(initial=False)
        assert self._matcher is not None
        return self._matcher

    def _load(self, initial: bool) -> None:
        with self._lock:
            changed = False
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError as exc:
                if initial:
                    raise IntelConfigError(f"{self.path}: {exc.strerror or exc}") from None
                mtime = self._config_mtime_ns
            if mtime != self._config_mtime_ns:
                try:
                    configs = load_config(self.path)
                except IntelConfigError:
                    if initial:
                        raise
                    configs = [s.config for s in self._feeds.values()]  # a broken edit keeps the working feeds
                else:
                    self._config_mtime_ns = mtime
                old = self._feeds
                self._feeds = {c.name: old[c.name] if c.name in old and old[c.name].config == c else FeedState(c)
                               for c in configs}
                changed = set(old) != set(self._feeds) or any(old.get(n) is not s for n, s in self._feeds.items())
            for state in self._feeds.values():
                changed |= self._read(state, initial)
            if changed or self._matcher is None:
                self._matcher = IntelMatcher(self.indicators(active_only=True))
                self.reloads += 0 if initial else 1

    def _read(self, state: FeedState, initial: bool) -> bool:
        """Re-read one feed if its file changed; True when its indicators changed."""
        c = state.config
        try:
            mtime = c.path.stat().st_mtime_ns
            if mtime == state.mtime_ns and state.error is None:
                return False
            fmt, parsed = parse_feed(c, c.path.read_text(encoding="utf-8", errors="replace"), mtime)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            if initial:
                raise IntelConfigError(f"{self.path}: feed {c.name!r} ({c.path}): {reason}") from None
            state.error = reason
            return False
        state.table, state.skipped = parsed.table(c.name), parsed.skipped
        state.format, state.mtime_ns, state.error = fmt, mtime, None
        state.loaded_at_ns = time.time_ns()
        return True

    def indicators(self, active_only: bool = False) -> pa.Table:
        """Every feed's indicators (``active_only``: of the enabled feeds)."""
        tables = [s.table for s in self._feeds.values() if s.config.enabled or not active_only]
        return pa.concat_tables(tables) if tables else INDICATOR_SCHEMA.empty_table()

    def status(self) -> pa.Table:
        """One row per feed (the store's ``intel_feeds`` table)."""
        now = time.time_ns()
        rows = []
        for s in self._feeds.values():
            counts = pc.value_counts(s.table.column("type")).to_pylist() if s.table.num_rows else []
            expired = pc.sum(pc.less(s.table.column("valid_until").cast(pa.int64()), now)).as_py() or 0
            rows.append({
                "feed": s.config.name, "path": str(s.config.path), "format": s.format or s.config.format or "",
                "enabled": s.config.enabled, "indicators": s.table.num_rows,
                "by_type": json.dumps({c["values"]: c["counts"] for c in counts}, sort_keys=True),
                "expired": expired,
                "skipped": json.dumps(s.skipped, sort_keys=True, ensure_ascii=False),
                # µs-rounded: every reader (Python datetimes, Elasticsearch) takes these times as they are
                "loaded_at": s.loaded_at_ns // 1000 * 1000 or None, "file_mtime": s.mtime_ns // 1000 * 1000 or None,
                "error": s.error})
        return pa.Table.from_pylist(rows, schema=FEED_STATUS_SCHEMA) if rows else FEED_STATUS_SCHEMA.empty_table()
