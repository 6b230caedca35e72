"""Early warnings: an alert is announced in the batch whose events first reach its threshold, with the id its
final alert will have, long before the final alert (which waits for its episode to close); and a rogue PFCP
deletion, judged by the session table, is announced in the batch that carries it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from ingest.control import ControlPlane
from ingest.detect import DetectStage, Results, build_engine
from ingest.pipeline import FlowStage, Part, sensor_parts
from ingest.privacy import Pseudonymizer
from sensors.capture.source import CaptureFiles
from sensors.generate.scenarios import N4_ATTACKER, multi_stage


def batches(pcap: Path, out: Path, chunk_bytes: int) -> Iterator[tuple[Results, int, int]]:
    """Stage 3's results per packet batch: (results, batch's first and last packet time in ns)."""
    engine = build_engine()
    flow_stage, detect = FlowStage(), DetectStage(engine, ControlPlane())  # messages are not written
    seq = 0
    for part, _ in sensor_parts(CaptureFiles([str(pcap)], chunk_bytes), engine, Pseudonymizer.for_output(out),
                                processes=1):
        seq = part.seq + 1
        assert part.batch is not None
        yield detect.update([flow_stage.update(part)]), part.batch.first_ts_ns, part.batch.last_ts_ns
    yield detect.update([flow_stage.update(Part(seq=seq, end=True))]), 0, 0


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Results, int, int]]:
    tmp = tmp_path_factory.mktemp("early")
    return list(batches(multi_stage(tmp / "multi_stage.pcap"), tmp / "out", chunk_bytes=256 * 1024))


def _ids(t: pa.Table) -> list[str]:
    return t.column("alert_id").to_pylist()


def test_every_alert_is_announced_first_with_its_final_id(stream: list[tuple[Results, int, int]]) -> None:
    warned = {a: i for i, (r, _, _) in enumerate(stream) for a in _ids(r.warnings)}
    final = {a: i for i, (r, _, _) in enumerate(stream) for a in _ids(r.alerts)}
    assert len(stream) > 20 and final
    assert set(warned) == set(final), "each alert has one early warning, with the alert's own id"
    assert all(warned[a] <= final[a] for a in final)  # the same batch when it crossed and closed in one
    rows = {r["alert_id"]: r for res, _, _ in stream for r in res.warnings.select(
        ["alert_id", "level", "signature", "rule_id", "group"]).to_pylist()}
    for res, _, _ in stream:
        for r in res.alerts.select(["alert_id", "level", "signature", "rule_id", "group"]).to_pylist():
            assert rows[r["alert_id"]] == r


def test_a_rogue_pfcp_deletion_is_announced_in_the_batch_that_carries_it(
        stream: list[tuple[Results, int, int]]) -> None:
    def rogue(t: pa.Table) -> list[dict[str, object]]:
        rows = t.select(["alert_id", "src_ip", "level", "first_seen"]).cast(
            pa.schema([("alert_id", pa.string()), ("src_ip", pa.string()), ("level", pa.string()),
                       ("first_seen", pa.int64())])).to_pylist()
        return [r for r in rows if r["src_ip"] == N4_ATTACKER and r["level"] == "red"]

    ((i, warning),) = [(i, w) for i, (r, _, _) in enumerate(stream) for w in rogue(r.warnings)]
    _, first_ns, last_ns = stream[i]
    assert first_ns <= warning["first_seen"] <= last_ns  # the deletion's own batch
    ((j, alert),) = [(j, a) for j, (r, _, _) in enumerate(stream) for a in rogue(r.alerts)]
    assert alert["alert_id"] == warning["alert_id"] and j > i + 10  # the final alert waits for its window
