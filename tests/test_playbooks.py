"""Response playbooks as data (rules/playbooks/): what a case's checklist is made of."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.playbooks import PlaybookError, applicable, load_playbooks


def test_bundled_playbooks_load_in_both_languages_with_unique_steps() -> None:
    books = load_playbooks()
    assert books[0].id == "triage" and books[0].default
    keys = [s.key for b in books for s in b.steps]
    assert len(keys) == len(set(keys))
    assert all(s.text["zh-CN"] and s.text["en"] for b in books for s in b.steps)
    assert {"pfcp-attack", "gtp-user-plane", "reconnaissance", "credential-attack", "command-and-control",
            "denial-of-service", "industrial-control"} <= {b.id for b in books}


def test_an_incident_gets_the_playbooks_its_alerts_call_for() -> None:
    books = load_playbooks()
    incident = {"stages": [{"tactic": "discovery", "signatures": ["TCP vertical port scan (many ports of one host probed "
                                                                  "with SYN)"]},
                           {"tactic": "impact", "signatures": ["PFCP request out of its node's sequence (spoofed SMF/UPF)"]}]}
    alerts = [{"signature": "PFCP request out of its node's sequence (spoofed SMF/UPF)", "category": "Potentially Bad Traffic"}]
    # a PFCP deletion is an impact: the denial-of-service list (is the service still up?) comes with it
    assert [b.id for b in applicable(books, incident, alerts)] == ["triage", "pfcp-attack", "reconnaissance",
                                                              "denial-of-service"]
    flood = [{"signature": "UDP flood towards one host", "category": "Attempted Denial of Service"}]
    assert [b.id for b in applicable(books, {"stages": []}, flood)] == ["triage", "denial-of-service"]
    assert [b.id for b in applicable(books, {"stages": []}, [])] == ["triage"]


@pytest.mark.parametrize("text,words", [
    ("id: x\ntitle: {en: X}\nsteps: [{id: a, zh-CN: 甲, en: A}]\nmatch: {tactics: [impact]}\n", "title: zh-CN and en"),
    ("id: x\ntitle: {zh-CN: 甲, en: X}\nsteps: [{id: a, en: A}]\nmatch: {tactics: [impact]}\n", "steps[0]: id, zh-CN"),
    ("id: x\ntitle: {zh-CN: 甲, en: X}\nsteps: [{id: a, zh-CN: 甲, en: A}]\n", "needs a match"),
    ("id: x\ntitle: {zh-CN: 甲, en: X}\nsteps: [{id: a, zh-CN: 甲, en: A}]\nmatch: {ports: [1]}\n", "match: signatures"),
    ("id: [unclosed\n", "playbooks.yml"),
])
def test_a_bad_playbook_names_its_file_and_setting(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "playbooks.yml").write_text(text, encoding="utf-8")
    with pytest.raises(PlaybookError, match=str(tmp_path)) as e:
        load_playbooks(tmp_path)
    assert words in str(e.value)
