"""Trend forecast: per-category alert and traffic rates, Holt-Winters with a season, a warning before the threshold
is crossed (docs/posture.md, "Trend")."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from console.cli import main
from detection.alerts import ALERT_SCHEMA
from detection.trend import TrendConfig, TrendConfigError, TrendTracker
from ingest.replay import replay
from sensors.generate.scenarios import rising_scans

T0 = 1_700_000_040 * 10**9  # on a minute
MINUTE = 60 * 10**9


def _run(tracker: TrendTracker, values: list[float]) -> list[tuple[int, str]]:
    """One traffic:packets value per minute -> (bucket index that closed, warning kind)."""
    out = []
    for i, v in enumerate(values):
        _, warnings = tracker.update(ALERT_SCHEMA.empty_table(), T0 + (i + 1) * MINUTE,
                                     [[(T0 + i * MINUTE) // 10**9, int(v), int(v) * 100]])
        out += [(i, w["kind"]) for w in warnings.to_pylist()]
    return out


def _config(**kw: object) -> TrendConfig:
    return TrendConfig(**{"lateness_s": 0.0, "thresholds": (("traffic:packets", 1000.0),), **kw})  # type: ignore[arg-type]


def test_a_steady_rise_is_warned_of_before_it_crosses_the_threshold() -> None:
    values = [100.0] * 20 + [100.0 + 40 * k for k in range(1, 30)]
    events = _run(TrendTracker(_config(season_buckets=10**6)), values)
    crossed = next(i for i, v in enumerate(values) if v >= 1000)
    assert [k for _, k in events] == ["forecast", "crossed"], events
    warned_at = events[0][0]
    assert events[1][0] == crossed
    assert crossed - warned_at >= 3, "at least three minutes' notice of a rise of 40 a minute"
    assert values[warned_at] < 1000


def test_the_season_learns_a_daily_peak_and_still_warns_of_a_rise_that_breaks_it() -> None:
    """A daily peak at 880 under a threshold of 1000: after two seasons the seasonal forecast expects it; a
    forecast without a season warns of the same peak every day.  A slow rise on top is warned of in time."""
    day = 24  # buckets per 'day', to keep the test short

    def series(days: int, rise_from: int | None) -> list[float]:
        return [500 + 380 * math.sin(2 * math.pi * i / day) + (10 * (i - rise_from) if rise_from and i >= rise_from else 0)
                for i in range(days * day)]

    regular = series(8, None)
    seasonal = _run(TrendTracker(_config(season_buckets=day)), regular)
    flat = _run(TrendTracker(_config(season_buckets=10**6)), regular)
    after_learning = [e for e in seasonal if e[0] >= 2 * day]
    assert after_learning == [], f"the regular peak is no news once learnt: {seasonal}"
    assert len([e for e in flat if e[0] >= 2 * day]) >= 5, "without a season every daily rise looks like a threat"

    broken = series(10, rise_from=5 * day)
    events = _run(TrendTracker(_config(season_buckets=day)), broken)
    late = [e for e in events if e[0] >= 5 * day]
    assert late and late[0][1] == "forecast", events
    crossed = next(i for i, v in enumerate(broken) if v >= 1000)
    assert crossed - late[0][0] >= 3, (late, crossed)
    assert ("crossed" in [k for _, k in late])


def test_a_series_warns_once_per_episode_and_again_after_it_fell_back() -> None:
    up = [100.0] * 10 + [100.0 + 60 * k for k in range(1, 20)] + [1200.0] * 5
    values = up + [100.0] * 20 + up
    kinds = [k for _, k in _run(TrendTracker(_config(season_buckets=10**6)), values)]
    assert kinds == ["forecast", "crossed", "forecast", "crossed"]


def test_rising_scans_replayed_warn_of_alerts_and_traffic_before_they_cross(tmp_path: Path) -> None:
    capture = rising_scans(tmp_path / "rising.pcap")
    config = tmp_path / "trend.yml"
    config.write_text("min_buckets: 3\nthresholds:\n  - series: 'alerts:Attempted Information Leak'\n"
                      "    threshold: 8\n  - series: traffic:packets\n    threshold: 800\n")
    results = []
    for chunk in (64 << 20, 32 << 10):  # one batch, and a batch every few seconds: the same forecast
        out = tmp_path / f"out-{chunk}"
        replay([str(capture)], out, trend=config, chunk_bytes=chunk, processes=1)
        results.append(pq.read_table(out / "trend_warnings.parquet").to_pylist())
    assert results[0] == results[1]
    for series in ("alerts:Attempted Information Leak", "traffic:packets"):
        rows = [r for r in results[0] if r["series"] == series]
        assert [r["kind"] for r in rows] == ["forecast", "crossed"], rows
        assert rows[0]["ts"] < rows[1]["ts"] and rows[0]["observed"] < rows[0]["threshold"] <= rows[1]["observed"]
        assert rows[0]["lead_s"] > 0 and rows[0]["expected_at"] > rows[0]["ts"]
    trend = {r["series"]: r for r in pq.read_table(out / "trend.parquet").to_pylist()}
    assert trend["alerts:Attempted Information Leak"]["history"][:4] == [1, 2, 2, 4]  # new scanners per minute
    assert trend["traffic:packets"]["threshold"] == 800 and trend["traffic:bytes"]["threshold"] is None
    assert sum(trend["traffic:packets"]["history"]) == sum(k * 110 for k in range(1, 13))  # every packet, once


def test_bad_settings_name_the_file_and_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "trend.yml"
    for text, words in (("bucket_s: -5\n", "bucket_s must be a positive number"),
                        ("buckets: 5\n", "unknown setting 'buckets'"),
                        ("thresholds:\n  - threshold: 3\n", "thresholds[0] needs a series"),
                        ("alpha: 3\n", "alpha must be at most 1"),
                        ("[unclosed\n", "trend.yml")):
        bad.write_text(text)
        with pytest.raises(TrendConfigError, match=str(bad)) as e:
            TrendConfig.load(bad)
        assert words in str(e.value)
    bad.write_text("alpha: 3\n")
    capsys.readouterr()
    assert main(["replay", "pcaps/", "--out", str(tmp_path / "o"), "--trend", str(bad), "-q"]) == 2
    assert capsys.readouterr().err.strip() == f"liaowang: error: {bad}: alpha must be at most 1"
    assert not (tmp_path / "o").exists()


def test_bundled_thresholds() -> None:
    cfg = TrendConfig.load()
    assert cfg.threshold("alerts:all") == 30 and cfg.threshold("alerts:Attempted Denial of Service") == 10
    assert cfg.threshold("alerts:Misc activity") == 20 and cfg.threshold("traffic:bytes") is None
