"""``liaowang evaluate`` on the bundled and generated captures (a fresh clone has no shared corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.cli import main
from ingest.evaluate import CLASSES, EXPOSURE, evaluate


def test_every_attack_class_is_detected_and_benign_captures_stay_quiet() -> None:
    ev = evaluate(None)
    assert ev.captures >= 15 and not ev.missed
    assert all(ev.detected[c] == ev.expected[c] > 0 for c in ev.expected)
    assert set(ev.expected) <= set(CLASSES)
    assert sum(ev.false_alerts.values()) == 0
    assert ev.benign_captures >= 6 and ev.benign_hours > 0
    assert set(ev.benign_alerts) <= EXPOSURE  # true findings (SUPIs in OAI's cleartext SBI), no attack alerts


def test_evaluate_writes_the_markdown_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.md"
    assert main(["evaluate", "--out", str(out)]) == 0
    table = out.read_text()
    assert table.startswith("| attack class |") and "| teid_spoofing | 1 | 1 | 100% |" in table
    assert "false alerts per hour" in capsys.readouterr().out
    assert main(["evaluate", "--shared", str(tmp_path / "nowhere")]) == 2
