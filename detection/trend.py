"""Trend (趋势预测): alert and traffic rates per time bucket, a short-term forecast, and a warning *before* a
threshold is crossed.

**Series**, counted per bucket of event time (``bucket_s``, default 60 s):
``alerts:all`` and ``alerts:<category>`` (new alerts, by ``first_seen``, counted
once when first seen: an early warning, else the alert; one that arrives after
its bucket closed counts in the oldest open one), and ``traffic:packets`` /
``traffic:bytes`` (from the sensor's per-second counts of each packet batch).  A
bucket closes when the event time passes its end by ``lateness_s``.

**Forecast**: additive Holt-Winters with a damped trend (``alpha`` level, ``beta``
trend, ``gamma`` season, ``phi`` damping), season ``season_buckets`` long (default
a day of minutes).  Until two seasons are seen it runs without a season; then
the seasonal indices start from those two seasons.  So a daily peak the series
always has is expected, not warned of, while a rise that breaks the pattern is.

**Warning**: when a bucket closes, the forecast over the next ``horizon_buckets``
is compared with the series' threshold (``rules/forecast/trend.yml``: exact names first,
then glob patterns).  If the series is below the threshold now and the forecast
reaches it, a ``forecast`` row says when (``expected_at``) and how much earlier
that is than now (``lead_s``); when the series itself reaches the threshold a
``crossed`` row follows.  A series warns once per episode: it re-arms when it is
back under ``rearm`` x threshold and its forecast under the threshold.  The first
two seasons are forecast without a season, so a regular daily rise can warn on
the first two days.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detection import yamldocs
from detection.detectors.base import LruDict
from detection.rules.loader import BUNDLED_RULES
from sensors.schema import Field, arrow_schema

BUNDLED_TREND = BUNDLED_RULES / "forecast" / "trend.yml"

TREND_SCHEMA_VERSION = 1
TREND_FIELDS: list[Field] = [
    Field("series", pa.string(), "alerts:all, alerts:<category>, traffic:packets or traffic:bytes"),
    Field("bucket", pa.timestamp("ns", tz="UTC"), "start of the last closed bucket"),
    Field("bucket_s", pa.float64(), "bucket length, seconds"),
    Field("observed", pa.float64(), "the series' value in that bucket (per bucket, not per second)"),
    Field("forecast", pa.list_(pa.float64()), "forecast of the next horizon buckets, the first one next"),
    Field("history", pa.list_(pa.float64()), "observed values of the last buckets, oldest first, the last one"
          " 'observed'"),
    Field("threshold", pa.float64(), "the series' warning threshold (null: none set, forecast only)"),
    Field("seasonal", pa.bool_(), "whether two seasons were seen and the forecast has a season"),
    Field("state", pa.string(), "normal, warning (forecast crosses the threshold) or crossed"),
    Field("expected_at", pa.timestamp("ns", tz="UTC"), "start of the first bucket forecast to reach the"
          " threshold (null: none within the horizon)"),
]
TREND_SCHEMA = arrow_schema(TREND_FIELDS, "trend", TREND_SCHEMA_VERSION)
TREND_WARNING_FIELDS: list[Field] = [
    Field("warning_id", pa.string(), "deterministic: hash of series, kind and bucket"),
    Field("ts", pa.timestamp("ns", tz="UTC"), "event time it was raised: the end of the bucket that closed"),
    Field("series", pa.string(), "see trend.series"),
    Field("kind", pa.string(), "forecast (the forecast reaches the threshold) or crossed (the series did)"),
    Field("observed", pa.float64(), "the series' value in the bucket that closed"),
    Field("forecast_peak", pa.float64(), "highest forecast within the horizon"),
    Field("threshold", pa.float64(), "the threshold"),
    Field("expected_at", pa.timestamp("ns", tz="UTC"), "forecast: start of the first bucket forecast to reach it;"
          " crossed: the bucket that did"),
    Field("lead_s", pa.float64(), "forecast: seconds from ts to expected_at; crossed: 0"),
    Field("reason", pa.string(), "in words: 'alerts:all forecast 31.2 >= 30 at 10:42 (in 240 s); now 12'"),
]
TREND_WARNING_SCHEMA = arrow_schema(TREND_WARNING_FIELDS, "trend_warnings", TREND_SCHEMA_VERSION)


class TrendConfigError(Exception):
    """A trend configuration that cannot be used: names the file and the setting."""


@dataclass(frozen=True)
class TrendConfig:
    bucket_s: float = 60.0
    season_buckets: int = 1440
    horizon_buckets: int = 15
    history_buckets: int = 60
    lateness_s: float = 60.0
    alpha: float = 0.3
    beta: float = 0.1
    gamma: float = 0.2
    phi: float = 0.95
    min_buckets: int = 5  # no forecast of a series seen for fewer buckets
    rearm: float = 0.8
    thresholds: tuple[tuple[str, float | None], ...] = (("alerts:all", 30.0),)

    def threshold(self, series: str) -> float | None:
        """The series' threshold: its exact entry, else the first glob pattern that matches it."""
        exact = dict(self.thresholds)
        if series in exact:
            return exact[series]
        return next((t for pattern, t in self.thresholds if fnmatch.fnmatchcase(series, pattern)), None)

    @classmethod
    def load(cls, path: Path | None = None) -> TrendConfig:
        """``rules/forecast/trend.yml`` or another file in its shape."""
        path = BUNDLED_TREND if path is None else Path(path)
        try:
            doc = yamldocs.load(path) or {}
        except (OSError, yamldocs.YamlError) as e:
            raise TrendConfigError(f"{path}: {e}") from e
        if not isinstance(doc, dict):
            raise TrendConfigError(f"{path}: a mapping of settings expected")
        numbers = {k: v for k, v in doc.items() if k != "thresholds"}
        defaults = cls()
        for key, value in numbers.items():
            if key not in cls.__dataclass_fields__:
                raise TrendConfigError(f"{path}: unknown setting {key!r}")
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise TrendConfigError(f"{path}: {key} must be a positive number")
            numbers[key] = type(getattr(defaults, key))(value)
        for key in ("alpha", "beta", "gamma", "phi", "rearm"):
            if numbers.get(key, 0.5) > 1:
                raise TrendConfigError(f"{path}: {key} must be at most 1")
        thresholds = []
        for i, entry in enumerate(doc.get("thresholds") or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("series"), str):
                raise TrendConfigError(f"{path}: thresholds[{i}] needs a series name or pattern")
            t = entry.get("threshold")
            if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or t <= 0):
                raise TrendConfigError(f"{path}: thresholds[{i}].threshold must be a positive number or null")
            thresholds.append((entry["series"], None if t is None else float(t)))
        return cls(**numbers, thresholds=tuple(thresholds))


class HoltWinters:
    """Additive Holt-Winters with a damped trend, one observation at a time."""

    def __init__(self, cfg: TrendConfig) -> None:
        self.cfg = cfg
        self.n = 0
        self.level: float | None = None
        self.trend = 0.0
        self.season: list[float] | None = None
        self._first_seasons: list[float] = []  # the first two seasons, to start the seasonal indices from

    def observe(self, y: float) -> None:
        c, m = self.cfg, self.cfg.season_buckets
        if self.season is None and len(self._first_seasons) < 2 * m:
            self._first_seasons.append(y)
        s = self.season[self.n % m] if self.season is not None else 0.0
        if self.level is None:
            self.level = y
        else:
            level = c.alpha * (y - s) + (1 - c.alpha) * (self.level + c.phi * self.trend)
            self.trend = c.beta * (level - self.level) + (1 - c.beta) * c.phi * self.trend
            self.level = level
            if self.season is not None:
                self.season[self.n % m] = c.gamma * (y - level) + (1 - c.gamma) * s
        self.n += 1
        if self.season is None and len(self._first_seasons) == 2 * m:
            first, second = self._first_seasons[:m], self._first_seasons[m:]
            mean1, mean2 = sum(first) / m, sum(second) / m
            self.season = [((a - mean1) + (b - mean2)) / 2 for a, b in zip(first, second)]
            self.level, self.trend = mean2, (mean2 - mean1) / m
            self._first_seasons = []

    def forecast(self, horizon: int) -> list[float]:
        """The next ``horizon`` values (never below zero: these are counts)."""
        if self.level is None:
            return []
        c, m = self.cfg, self.cfg.season_buckets
        out, damped = [], 0.0
        for h in range(1, horizon + 1):
            damped += c.phi ** h
            s = self.season[(self.n + h - 1) % m] if self.season is not None else 0.0
            out.append(max(0.0, self.level + damped * self.trend + s))
        return out


@dataclass
class _Series:
    model: HoltWinters
    history: list[float] = field(default_factory=list)
    state: str = "normal"
    last: dict[str, Any] | None = None  # its last trend row


class TrendTracker:
    """Alerts and packet batches (as they come) and event time -> per-series rows and warnings."""

    def __init__(self, config: TrendConfig | None = None) -> None:
        self.cfg = config if config is not None else TrendConfig.load()
        self.bucket_ns = int(self.cfg.bucket_s * 1e9)
        self._series: dict[str, _Series] = {}
        self._open: dict[int, dict[str, float]] = {}  # bucket index -> series -> value so far
        self._next: int | None = None  # the oldest bucket not closed
        self._counted: LruDict[str, None] = LruDict()  # alert ids counted (an early warning, then its alert)

    def update(self, alerts: pa.Table, watermark_ns: int | None,
               seconds: Iterable[Sequence[int]] = ()) -> tuple[pa.Table, pa.Table]:
        """Alerts and early warnings (each alert id counts once), a packet batch's ``[second, packets, bytes]``
        counts, the event time reached -> (rows of the series whose bucket closed, warnings)."""
        for second, packets, bytes_ in seconds:
            b = second * 1_000_000_000 // self.bucket_ns
            self._start(b)
            assert self._next is not None
            counts = self._open.setdefault(max(b, self._next), {})
            counts["traffic:packets"] = counts.get("traffic:packets", 0.0) + packets
            counts["traffic:bytes"] = counts.get("traffic:bytes", 0.0) + bytes_
        if alerts.num_rows:
            starts = pc.divide(alerts.column("first_seen").cast(pa.int64()), self.bucket_ns).to_pylist()
            self._start(min(starts))
            assert self._next is not None
            for b, category, alert_id in zip(starts, alerts.column("category").to_pylist(),
                                             alerts.column("alert_id").to_pylist()):
                if alert_id in self._counted:
                    continue
                self._counted[alert_id] = None
                counts = self._open.setdefault(max(b, self._next), {})
                for name in ("alerts:all", f"alerts:{category or 'unknown'}"):
                    counts[name] = counts.get(name, 0.0) + 1.0
        rows: dict[str, dict[str, Any]] = {}
        warnings: list[dict[str, Any]] = []
        if watermark_ns is not None and self._next is not None:
            closable = (watermark_ns - int(self.cfg.lateness_s * 1e9)) // self.bucket_ns  # buckets before it close
            if closable - self._next > 2 * self.cfg.season_buckets:  # a long gap: what was learnt is stale
                self._series.clear()
                self._open = {b: v for b, v in self._open.items() if b >= closable}
                self._next = closable
            while self._next < closable:
                self._close(self._next, rows, warnings)
                self._next += 1
        return (pa.Table.from_pylist(list(rows.values()), schema=TREND_SCHEMA),
                pa.Table.from_pylist(warnings, schema=TREND_WARNING_SCHEMA))

    def flush(self) -> tuple[pa.Table, pa.Table]:
        """The input ended: close every bucket still open (the last minutes count too)."""
        rows: dict[str, dict[str, Any]] = {}
        warnings: list[dict[str, Any]] = []
        if self._next is not None and self._open:
            last = max(self._open)
            for b in range(self._next, last + 1):
                self._close(b, rows, warnings)
            self._next = last + 1
        return (pa.Table.from_pylist(list(rows.values()), schema=TREND_SCHEMA),
                pa.Table.from_pylist(warnings, schema=TREND_WARNING_SCHEMA))

    def table(self) -> pa.Table:
        """Every series' last row."""
        return pa.Table.from_pylist([s.last for _, s in sorted(self._series.items()) if s.last],
                                    schema=TREND_SCHEMA)

    # -- internals ------------------------------------------------------------------

    def _start(self, bucket: int) -> None:
        if self._next is None:
            self._next = bucket

    def _close(self, bucket: int, rows: dict[str, dict[str, Any]], warnings: list[dict[str, Any]]) -> None:
        cfg = self.cfg
        counts = self._open.pop(bucket, {})
        for name in counts:
            if name not in self._series:
                self._series[name] = _Series(HoltWinters(cfg))
        start_ns, end_ns = bucket * self.bucket_ns, (bucket + 1) * self.bucket_ns
        for name, s in self._series.items():
            y = counts.get(name, 0.0)
            s.model.observe(y)
            s.history = (s.history + [y])[-cfg.history_buckets:]
            threshold = cfg.threshold(name)
            forecast = s.model.forecast(cfg.horizon_buckets) if s.model.n >= cfg.min_buckets else []
            reach = next((h for h, f in enumerate(forecast) if threshold is not None and f >= threshold), None)
            expected_ns = None if reach is None else end_ns + reach * self.bucket_ns
            peak = max(forecast, default=0.0)
            if threshold is not None:
                if y >= threshold and s.state != "crossed":
                    warnings.append(self._warning(name, "crossed", end_ns, y, peak, threshold, start_ns))
                    s.state = "crossed"
                elif y < threshold and reach is not None and s.state == "normal":
                    assert expected_ns is not None
                    warnings.append(self._warning(name, "forecast", end_ns, y, peak, threshold, expected_ns))
                    s.state = "warning"
                elif y < cfg.rearm * threshold and peak < threshold:
                    s.state = "normal"
            # a series that stays at zero and did not move makes no row (a quiet category is no news)
            if s.last is None or y or s.last["observed"] or s.state != s.last["state"]:
                s.last = {"series": name, "bucket": start_ns, "bucket_s": cfg.bucket_s, "observed": y,
                          "forecast": [round(f, 3) for f in forecast], "history": list(s.history),
                          "threshold": threshold, "seasonal": s.model.season is not None, "state": s.state,
                          "expected_at": expected_ns}
                rows[name] = s.last

    def _warning(self, series: str, kind: str, ts_ns: int, observed: float, peak: float, threshold: float,
                 expected_ns: int) -> dict[str, Any]:
        lead_s = (expected_ns - ts_ns) / 1e9 if kind == "forecast" else 0.0
        if kind == "forecast":
            reason = (f"{series} forecast {peak:.1f} >= {_number(threshold)} within {lead_s:.0f} s;"
                      f" now {_number(observed)} per {_number(self.cfg.bucket_s)} s")
        else:
            reason = f"{series} {_number(observed)} >= {_number(threshold)} per {_number(self.cfg.bucket_s)} s"
        wid = hashlib.blake2b(f"{series}|{kind}|{ts_ns}".encode(), digest_size=10).hexdigest()
        return {"warning_id": wid, "ts": ts_ns, "series": series, "kind": kind, "observed": observed,
                "forecast_peak": round(peak, 3), "threshold": threshold, "expected_at": expected_ns,
                "lead_s": lead_s, "reason": reason}


def _number(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:.1f}"
