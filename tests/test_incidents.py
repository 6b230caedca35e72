"""Incidents on multi-stage scenarios with known stories (sensors/generate/scenarios.py): each story becomes
one incident with its stages in order, unrelated alerts stay apart (pairwise grouping precision and recall
are both 1), analysts' states outlive later snapshots, and the tactic map covers every bundled rule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.alerts import ALERT_SCHEMA
from detection.detectors import default_detectors
from detection.incidents import TACTICS, UNKNOWN_TACTIC, IncidentBuilder, load_tactics, rule_tactic
from detection.rules.loader import load_rules
from ingest.load import load_output
from ingest.replay import replay
from ingest.store import Condition, Query, open_store
from ingest.store.api import Store
from sensors.generate.scenarios import STORIES, multi_stage, story_of


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("scenario")
    out = tmp / "out"
    summary = replay([str(multi_stage(tmp / "multi_stage.pcap"))], out, processes=1)
    assert summary.incidents
    with open_store(tmp / "store") as store:
        load_output(out, store, summary)
    return out


def grouping_scores(alerts: pa.Table, incidents: pa.Table) -> tuple[float, float]:
    """Pairwise precision and recall of the incidents' grouping of alerts against the true stories."""
    incident_of = {a: r["incident_id"] for r in incidents.to_pylist() for a in r["alert_ids"]}
    rows = alerts.select(["alert_id", "src_ip", "dst_ip"]).to_pylist()
    truth = {r["alert_id"]: story_of(r["src_ip"], r["dst_ip"]) for r in rows}
    assert None not in truth.values(), "every alert belongs to a generated story"
    pairs = list(itertools.combinations(truth, 2))
    same_true = {p for p in pairs if truth[p[0]] == truth[p[1]]}
    same_found = {p for p in pairs if incident_of[p[0]] == incident_of[p[1]]}
    return len(same_true & same_found) / max(len(same_found), 1), len(same_true & same_found) / max(len(same_true), 1)


def test_each_story_is_one_incident_with_its_stages_in_order(scenario: Path) -> None:
    alerts = pq.read_table(scenario / "alerts.parquet")
    incidents = pq.read_table(scenario / "incidents.parquet")
    precision, recall = grouping_scores(alerts, incidents)
    assert (precision, recall) == (1.0, 1.0)
    assert incidents.num_rows == len(STORIES)
    by_entity = {e: r for r in incidents.to_pylist() for e in r["entities"]}
    intrusion = by_entity["host:10.0.0.66"]
    assert intrusion["tactics"] == ["discovery", "credential_access", "command_and_control", "exfiltration"]
    assert [s["first_seen_ns"] for s in intrusion["stages"]] == sorted(s["first_seen_ns"] for s in intrusion["stages"])
    assert intrusion["level"] == "red" and intrusion["score"] == 100.0
    assert {"10.0.0.10", "203.0.113.50", "198.51.100.77"} <= set(intrusion["affected_assets"])
    n4 = by_entity["host:10.60.0.99"]
    assert n4["tactics"] == ["discovery", "impact"] and n4["level"] == "red"
    assert any("PFCP session modification/deletion" in s for st in n4["stages"] for s in st["signatures"])
    # a flood's sources are spoofed: its incident is keyed on the target, and it stays one stage
    assert by_entity["target:10.0.0.5"]["tactics"] == ["impact"]
    assert by_entity["host:10.0.0.77"]["level"] == "blue"  # a lone sweep: the lowest grade


def test_incidents_do_not_depend_on_how_alerts_are_batched(scenario: Path) -> None:
    alerts = pq.read_table(scenario / "alerts.parquet").sort_by([("first_seen", "ascending")])
    rules = load_rules() + [d.rule for d in default_detectors()]
    whole = IncidentBuilder(rules)
    whole.update(alerts)
    one_by_one = IncidentBuilder(rules)
    for i in range(alerts.num_rows):
        one_by_one.update(alerts.slice(i, 1))
    assert whole.incidents().to_pylist() == one_by_one.incidents().to_pylist()


def test_an_idle_actor_starts_a_new_incident(scenario: Path) -> None:
    alerts = pq.read_table(scenario / "alerts.parquet").sort_by([("first_seen", "ascending")])
    rules = load_rules() + [d.rule for d in default_detectors()]
    strict = IncidentBuilder(rules, max_gap_s=60.0)  # the intrusion's stages are minutes apart
    changed = [strict.update(alerts.slice(i, 1)) for i in range(alerts.num_rows)]
    titles = [r["title"] for t in changed for r in t.to_pylist() if "10.0.0.66" in r["title"]]
    assert len({t for t in titles}) >= 3  # no longer one story


def test_the_store_keeps_the_analysts_state(scenario: Path) -> None:
    with open_store(scenario.parent / "store") as store:
        _analyst_state(store, scenario)


def _analyst_state(store: Store, scenario: Path) -> None:
    stored = store.search(Query("incidents", limit=100)).rows
    assert len(stored) == len(STORIES) and {r["state"] for r in stored} == {"new"}
    target = next(r for r in stored if "10.0.0.66" in r["title"])
    assert store.set_incident_state(target["incident_id"], "contained")
    assert not store.set_incident_state("inc-none", "closed")
    store.write("incidents", pq.read_table(scenario / "incidents.parquet"))  # a later snapshot
    again = store.search(Query("incidents", [Condition("incident_id", "eq", target["incident_id"])])).rows[0]
    assert again["state"] == "contained" and again["alert_count"] == target["alert_count"]
    everyone = [r["incident_id"] for r in store.search(Query("incidents")).rows]
    assert store.acknowledged_incidents(everyone) == {target["incident_id"]}  # what escalation asks


def test_every_bundled_rule_is_a_stage_of_a_tactic() -> None:
    tactics = load_tactics()
    for rule in load_rules() + [d.rule for d in default_detectors()]:
        assert rule_tactic(rule, tactics) in TACTICS, rule.title
    assert UNKNOWN_TACTIC not in TACTICS


def test_an_alert_that_ties_two_incidents_merges_them() -> None:
    """Two hosts, then one subscriber seen behind both (a UE that changed address): one incident, and the
    absorbed one is given once more, marked, so copies of it can be dropped."""
    rules = load_rules()
    ssh = next(r for r in rules if r.title.startswith("SSH brute force"))

    def alert(n: int, src: str, subscriber: str | None) -> dict[str, object]:
        return {"alert_id": f"a{n}", "first_seen": n * 10**9, "last_seen": n * 10**9 + 1, "rule_id": ssh.id,
                "signature": ssh.title, "score": 60.0, "group": f"src_ip={src},dst_ip=10.9.9.9", "src_ip": src,
                "dst_ip": "10.9.9.9", "session": None if subscriber is None else f'{{"subscriber": "{subscriber}"}}'}

    builder = IncidentBuilder(rules)
    first = [builder.update(pa.Table.from_pylist([a], schema=ALERT_SCHEMA)) for a in
             (alert(1, "10.1.1.1", None), alert(2, "10.2.2.2", None), alert(3, "10.1.1.1", "sub-x"))]
    a_id, b_id = first[0].column("incident_id")[0].as_py(), first[1].column("incident_id")[0].as_py()
    assert a_id != b_id
    rows = builder.update(pa.Table.from_pylist([alert(4, "10.2.2.2", "sub-x")], schema=ALERT_SCHEMA)).select(
        ["incident_id", "merged_into"]).to_pylist()
    assert {(r["incident_id"], r["merged_into"]) for r in rows} == {(a_id, ""), (b_id, a_id)}
    kept = builder.incidents().select(["alert_count", "alert_ids", "entities"]).to_pylist()
    assert len(kept) == 1 and kept[0]["alert_count"] == 4 and set(kept[0]["alert_ids"]) == {"a1", "a2", "a3", "a4"}
    assert set(kept[0]["entities"]) == {"host:10.1.1.1", "host:10.2.2.2", "subscriber:sub-x"}
