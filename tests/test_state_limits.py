"""State limits under a flood of spoofed sources: the flow table evicts the least recently seen flows
(no packet lost from the flows), the rule counters and detector buffers shed the lightest groups (the
attacker's heavy group stays, and alerts as it would without a limit), detectors forget the least
recently used nodes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from detection.detectors import Beaconing
from detection.detectors.base import LruDict, Windowed
from detection.engine import DetectionEngine
from detection.flows.assembler import FlowAssembler
from detection.rules.loader import load_rules
from ingest.replay import format_summary, replay
from sensors.capture.source import read_frames
from sensors.decode import decode
from sensors.generate.attacks import generated_attacks, write_pcap
from sensors.generate.control_plane import pfcp_establishment_flood
from sensors.generate.flood import syn_flood
from tests.conftest import decode_file, flows_of


def _flows(path: Path, max_flows: int) -> tuple[pa.Table, int]:
    fa = FlowAssembler(max_flows=max_flows)
    out, most = [], 0
    for frames in read_frames(str(path), chunk_bytes=64 << 10):
        out.append(fa.update(decode(frames)))
        most = max(most, fa.active_flows)
    out.append(fa.flush())
    return pa.concat_tables(out), most


def test_a_flood_of_sources_stays_within_the_flow_limit(tmp_path: Path) -> None:
    path = tmp_path / "flood.pcap"
    syn_flood(path, 20_000, seconds=2.0)
    capped, most = _flows(path, 1000)
    assert most <= 1000
    reasons = pc.value_counts(capped.column("expiration_reason")).to_pylist()
    counts = {r["values"]: r["counts"] for r in reasons}
    assert counts["evicted"] > 15_000 and counts["end_of_input"] <= 1000
    assert pc.sum(capped.column("bidirectional_packets")).as_py() == 20_000  # every packet in some flow
    evicted = capped.filter(pc.equal(capped.column("expiration_reason"), "evicted"))
    kept = capped.filter(pc.equal(capped.column("expiration_reason"), "end_of_input"))
    # least recently seen go first: the flows still in the table at the end are the newest
    assert pc.min(kept.column("last_seen")).as_py() >= pc.max(evicted.column("last_seen")).as_py()
    uncapped, most = _flows(path, 0)
    assert most > 15_000 and uncapped.num_rows == capped.num_rows


@pytest.fixture(scope="module")
def sweep_in_flood(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """A horizontal sweep (one source, 80 hosts, 8 s) inside a SYN flood from 20,000 random sources, in
    time order: both start at the same second."""
    tmp = tmp_path_factory.mktemp("flood")
    syn_flood(tmp / "flood.pcap", 20_000, seconds=8.0)
    packets = pa.concat_tables([decode_file(generated_attacks(tmp)["sweep"]), decode_file(tmp / "flood.pcap")])
    return packets.sort_by([("ts", "ascending")])


def _packet_alerts(packets: pa.Table, max_partial_rows: int) -> tuple[pa.Table, DetectionEngine]:
    engine = DetectionEngine(load_rules(), detectors=[], max_partial_rows=max_partial_rows)
    alerts = []
    for batch in packets.to_batches(max_chunksize=2048):
        ts = batch.column(batch.schema.get_field_index("ts")).cast(pa.int64())
        alerts.append(engine.update(engine.packet_hits(batch), None, int(pc.max(ts).as_py())))
    alerts.append(engine.flush())
    return pa.concat_tables(alerts), engine


def _by_source(alerts: pa.Table, source: str) -> list[tuple[str, int]]:
    mine = alerts.filter(pc.equal(alerts.column("src_ip"), source))
    return sorted(zip(mine.column("signature").to_pylist(), mine.column("event_count").to_pylist()))


def test_rule_counts_shed_the_flood_and_keep_the_sweep(sweep_in_flood: pa.Table) -> None:
    free, unlimited = _packet_alerts(sweep_in_flood, 0)
    capped, engine = _packet_alerts(sweep_in_flood, 3000)
    sweep = _by_source(free, "198.51.100.10")
    assert any("sweep" in title.lower() for title, _ in sweep)
    assert _by_source(capped, "198.51.100.10") == sweep  # the same alerts, with the same event counts
    shed = engine.shed()
    assert shed["rule_groups"] > 10_000 and shed["rule_events"] >= shed["rule_groups"]
    assert unlimited.shed()["rule_groups"] == 0
    assert engine._packet_windows.partials is None or engine._packet_windows.partials.num_rows <= 3000
    # the flood itself is still seen: the SYN flood towards one service is one group, never shed
    assert set(capped.column("signature").to_pylist()) == set(free.column("signature").to_pylist())


def test_detector_buffer_sheds_one_off_flows_and_keeps_the_beacon(tmp_path: Path) -> None:
    beacon = flows_of([generated_attacks(tmp_path)["beaconing"]])
    # 5,000 one-off flows to as many external addresses, inside the beacon's hour
    rng = np.random.default_rng(3)
    one_off = beacon.take(pa.array(rng.integers(0, beacon.num_rows, 5000)))
    hosts = [f"203.0.{i // 250}.{i % 250 + 1}" for i in range(5000)]
    one_off = one_off.set_column(one_off.schema.get_field_index("dst_ip"), "dst_ip", pa.array(hosts))
    flows = pa.concat_tables([beacon, one_off.cast(beacon.schema)]).sort_by([("first_seen", "ascending")])

    def flagged(max_events: int) -> tuple[set[str], Windowed]:
        windows = Windowed(Beaconing(), lateness_s=0.0, max_events=max_events)
        found = []
        for batch in flows.to_batches(max_chunksize=500):
            detector = windows.detector
            mine = pa.Table.from_batches([batch]).filter(pa.array(detector.select(batch)))
            found.append(windows.update(mine, None))
        found.append(windows.flush())
        return {f"{r['src_ip']}>{r['dst_ip']}" for t in found if t is not None for r in t.to_pylist()}, windows

    free, _ = flagged(0)
    capped, windows = flagged(1000)
    assert free and capped == free
    assert windows.shed_events > 4000 and windows.buffered == 0


def test_detectors_do_not_buffer_what_they_never_judge(tmp_path: Path) -> None:
    """A flood towards an internal service: the beaconing, exfiltration and GTP-U detectors keep none of it."""
    syn_flood(tmp_path / "flood.pcap", 5000, seconds=1.0)
    flows = flows_of([tmp_path / "flood.pcap"])
    from detection.detectors import default_detectors

    for d in default_detectors():
        if d.source == "flows":
            assert not d.select(flows).any(), type(d).__name__


def test_lru_state_forgets_the_least_recently_used() -> None:
    nodes: LruDict[str, int] = LruDict(3)
    for name in ("smf", "a", "b"):
        nodes[name] = 1
    assert "smf" in nodes  # the real node keeps talking
    nodes["c"] = 1  # a spoofed one: pushes out the least recently used, not the SMF
    assert list(nodes) == ["b", "smf", "c"]
    nodes.setdefault("d", 1)
    assert len(nodes) == 3 and "smf" in nodes
    again = pickle.loads(pickle.dumps(nodes))  # detector state is checkpointed
    assert again == nodes and again.max_items == 3


def test_replay_reports_what_the_limits_cost(tmp_path: Path) -> None:
    syn_flood(tmp_path / "flood.pcap", 30_000, seconds=3.0)
    summary = replay([str(tmp_path / "flood.pcap")], tmp_path / "out", processes=1, max_flows=5000)
    assert summary.shed["flows"] > 20_000
    text = format_summary(summary)
    assert "state limits" in text and f"{summary.shed['flows']:,} flows evicted early" in text
    assert summary.as_stats()["flow"]["evicted"] == summary.shed["flows"]  # type: ignore[index]


def test_a_flood_of_pfcp_establishments_stays_within_the_session_limit(tmp_path: Path) -> None:
    """3,000 unanswered Session Establishment Requests with random F-SEIDs against a limit of 1,000: the flood's
    sessions are forgotten first, the SMF's established session stays and still owns its G-PDUs, and
    sessions.parquet keeps every session (the forgotten ones as they were last)."""
    frames = pfcp_establishment_flood(3000)
    capture = write_pcap(tmp_path / "pfcp_flood.pcap", [(1_700_000_000 + t, f) for t, f in frames])
    summary = replay([str(capture)], tmp_path / "out", processes=1, max_sessions=1000)
    kept = 3001 - summary.shed["sessions"]
    assert 0 < kept <= 1000
    sessions = pq.read_table(tmp_path / "out" / "sessions.parquet").to_pylist()
    assert len(sessions) == len({s["session_id"] for s in sessions}) == 3001
    (smf,) = [s for s in sessions if s["state"] == "established"]
    assert smf["cp_seid"] == 0x11 and smf["gtpu_flows"] == 1
    (tunnel,) = [f for f in pq.read_table(tmp_path / "out" / "flows.parquet").to_pylist() if f["tunnel_type"] == "gtpu"]
    assert tunnel["session_id"] == smf["session_id"]
    assert f"{summary.shed['sessions']:,} sessions forgotten" in format_summary(summary)
