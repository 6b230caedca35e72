"""The flow table's size limit: a flood of spoofed sources is evicted, least recently seen first, and no
packet is lost from the flows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from detection.flows.assembler import FlowAssembler
from sensors.capture.source import read_frames
from sensors.decode import decode
from sensors.generate.flood import syn_flood


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
