"""Situational posture: scores per network, asset, network function and slice; levels that rise at once and fall
only past a margin and a hold (no flapping), each change with its reason; on the multi-stage scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.alerts import ALERT_SCHEMA
from detection.posture import PostureTracker, level_of
from ingest.replay import replay
from sensors.generate.scenarios import INTRUDER, N4_ATTACKER, multi_stage

S = 1_000_000_000
T0 = 1_700_000_000 * S


def alert(alert_id: str, ts_ns: int, score: float, src: str = "10.9.0.1", dst: str = "10.9.0.2",
          signature: str = "test signature", dst_port: int = 80, session: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"alert_id": alert_id, "first_seen": ts_ns, "last_seen": ts_ns, "level": level_of(score),
            "signature": signature, "score": score, "src_ip": src, "dst_ip": dst, "dst_port": dst_port,
            "session": json.dumps(session) if session else None}


def table(*rows: dict[str, Any]) -> pa.Table:
    full = [{f.name: r.get(f.name) for f in ALERT_SCHEMA} for r in rows]
    return pa.Table.from_pylist(full, schema=ALERT_SCHEMA)


def test_score_decays_and_the_level_falls_only_past_margin_and_hold() -> None:
    tracker = PostureTracker(half_life_s=3600, margin=10, hold_s=300)
    rows, changes = tracker.update(table(alert("a1", T0, 90.0, dst_port=80)), T0)
    # an internal host's alert: criticality 0.6 -> 54 for the host and the network
    assert {r["scope"]: r["score"] for r in rows.to_pylist()} == {"asset:10.9.0.1": 54.0, "asset:10.9.0.2": 54.0,
                                                                   "network": 54.0}
    first = {c["scope"]: c for c in changes.to_pylist()}
    assert first["network"]["from_level"] == "normal" and first["network"]["to_level"] == "yellow"
    assert first["network"]["alert_id"] == "a1"
    assert first["network"]["reason"] == "score 54.0 >= 40 (yellow): test signature 10.9.0.1 -> 10.9.0.2"
    # 2500 s later: 33.4, under yellow's 40 but not under 40 - 10: still yellow
    rows, changes = tracker.update(table(), T0 + 2500 * S)
    assert changes.num_rows == 0 and {r["level"] for r in rows.to_pylist()} == {"yellow"}
    # 3300 s: 28.6 < 30 and held for long enough: blue, the reason says why
    rows, changes = tracker.update(table(), T0 + 3300 * S)
    network = next(c for c in changes.to_pylist() if c["scope"] == "network")
    assert (network["from_level"], network["to_level"], network["alert_id"]) == ("yellow", "blue", None)
    assert network["reason"].startswith("score 28.6 < 30 (yellow threshold 40 - margin 10) after yellow for 3300 s")


def test_a_score_hovering_at_a_threshold_does_not_flap() -> None:
    tracker = PostureTracker(half_life_s=3600, margin=10, hold_s=300)
    steps = [(T0, [alert("a", T0, 70.0)]), (T0 + 1000 * S, []), (T0 + 1000 * S, [alert("b", T0 + 1000 * S, 17.0)]),
             (T0 + 2000 * S, [])]
    scores, levels = [], []
    for now, new in steps:
        rows, changes = tracker.update(table(*new), now)
        scores += [r["score"] for r in rows.to_pylist() if r["scope"] == "network"]
        levels += [(c["from_level"], c["to_level"]) for c in changes.to_pylist() if c["scope"] == "network"]
    assert scores == [42.0, 34.6, 41.3, 34.6]  # around yellow's 40: the plain level would flap three times
    assert levels == [("normal", "yellow")]


def test_network_functions_industrial_devices_and_slices_weigh_more() -> None:
    from detection.inventory import NfInventory

    inventory = NfInventory()
    inventory._add("10.60.0.1", "SMF", T0, "pfcp")
    tracker = PostureTracker(inventory=inventory)
    rows, _ = tracker.update(table(
        alert("nf", T0, 80.0, src="203.0.113.9", dst="10.60.0.1", session={"snssai": "1-000001"}),
        alert("ot", T0, 80.0, src="203.0.113.9", dst="10.70.0.5", dst_port=502),
        alert("host", T0, 80.0, src="203.0.113.9", dst="10.80.0.7")), T0)
    score = {r["scope"]: r["score"] for r in rows.to_pylist()}
    assert score["nf:SMF@10.60.0.1"] == score["asset:10.60.0.1"] == score["asset:10.70.0.5"] == 80.0
    assert score["asset:10.80.0.7"] == 48.0
    assert score["slice:1-000001"] == 80.0
    assert "asset:203.0.113.9" not in score  # an external source is not one of our assets
    assert score["network"] == round(100 * (1 - 0.2 * 0.2 * 0.52), 1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("posture")
    out = tmp / "out"
    replay([str(multi_stage(tmp / "multi_stage.pcap"))], out, processes=1)
    return out


def test_scenario_posture_names_the_intruder_and_the_attacked_network_functions(scenario: Path) -> None:
    posture = {r["scope"]: r for r in pq.read_table(scenario / "posture.parquet").to_pylist()}
    changes = pq.read_table(scenario / "posture_changes.parquet").to_pylist()
    rises = [c for c in changes if c["scope"] == f"asset:{INTRUDER}" and c["alert_id"]]
    assert rises and rises[-1]["to_level"] in ("orange", "red")
    assert INTRUDER in rises[-1]["reason"]
    network = [c for c in changes if c["scope"] == "network"]
    assert network and network[0]["from_level"] == "normal"
    assert max(("normal", "blue", "yellow", "orange", "red").index(c["to_level"]) for c in network) >= 3
    nfs = [s for s in posture if s.startswith("nf:")]
    assert nfs, "the N4 attack targets the SMF/UPF: their posture is tracked"
    assert f"asset:{N4_ATTACKER}" in posture or any(N4_ATTACKER in c["reason"] for c in changes)
    for c in changes:  # every change says why, and rises name the alert that raised them
        assert c["reason"] and (c["alert_id"] is not None) == (c["reason"].startswith("score ") and " >= " in c["reason"])
