"""Hostile input: mutated packets through the whole pipeline, corrupted capture files through the readers.

A bounded smoke for CI; ``bench/fuzz.py`` runs millions (bench/fuzz-results.md).
An input that ever broke something is kept under ``tests/fuzz_regressions/``
(see its README) and replayed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.detect import build_engine
from ingest.replay import replay, run
from sensors.capture.frames import FrameBatch
from sensors.capture.source import CaptureError, read_frames
from sensors.capture.walk import PAD
from sensors.decode import decode
from sensors.schema import DecodeStatus
from tests.conftest import PCAPS, ROOT
from tests.fuzzing import MutantSource, Seeds, corrupt_file

CAPTURES = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


@pytest.fixture(scope="module")
def seeds() -> Seeds:
    return Seeds(CAPTURES)


def test_mutated_traffic_runs_through_the_whole_pipeline(seeds: Seeds, tmp_path: Path) -> None:
    """50,000 mutants: decoding, dissectors (tshark for NGAP), SBI, flows, rules, detectors, sinks.
    (Seed 1 found an HPACK Huffman error raised out of the SBI stage.)"""
    engine = build_engine()
    summary = run(MutantSource(seeds, seed=1, batches=10, per_batch=5_000), tmp_path / "out", engine, processes=1)
    assert summary.packets == 50_000
    errors = summary.decode_errors
    assert errors and sum(errors.values()) < summary.packets  # broken packets marked, the rest decoded
    assert summary.flows > 1_000


def test_regression_inputs(tmp_path: Path) -> None:
    summary = replay([str(REGRESSIONS / "diameter-2-byte-payload.pcap")], tmp_path / "d", processes=1)
    assert summary.packets == 1
    (row,) = pq.read_table(tmp_path / "d" / "proto_diameter.parquet", columns=["error"]).to_pylist()
    assert "shorter than the 20-byte header" in row["error"]
    with pytest.raises(CaptureError, match="compressed stream is damaged before the capture header"):
        list(read_frames(str(REGRESSIONS / "gzip-damaged-before-header.pcap.gz")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_of_a_real_packet_is_marked_not_raised(seeds: Seeds, data: st.DataObject) -> None:
    """Hypothesis picks a real frame and breaks it; shrinking would name the smallest breaking change."""
    i = data.draw(st.integers(0, len(seeds) - 1), label="frame")
    frame = bytearray(seeds.data[seeds.offset[i]:seeds.offset[i] + seeds.caplen[i]].tobytes())
    for pos, value in data.draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=6),
                                label="bytes"):
        if pos < len(frame):
            frame[pos] = value
    frame = frame[:data.draw(st.integers(0, len(frame)), label="caplen")]
    wirelen = data.draw(st.one_of(st.just(len(frame)), st.integers(0, 70_000)), label="wirelen")
    buf = np.zeros(len(frame) + PAD, dtype=np.uint8)
    buf[:len(frame)] = np.frombuffer(bytes(frame), dtype=np.uint8)
    batch = FrameBatch(buf=buf, data_off=np.zeros(1, dtype=np.int64), caplen=np.array([len(frame)]),
                       wirelen=np.array([max(wirelen, len(frame))]), ts_ns=np.array([1_700_000_000 * 10**9]),
                       link_type=np.array([seeds.link_type[i]], dtype=np.uint16),
                       interface_id=np.zeros(1, dtype=np.uint16), file_offset=np.zeros(1, dtype=np.int64))
    packets = decode(batch)
    assert packets.num_rows == 1
    assert packets.column("decode_status")[0].as_py() in {int(s) for s in DecodeStatus}


def test_corrupted_capture_files_are_damage_not_crashes(tmp_path: Path) -> None:
    """Cut, overwritten and mis-lengthed files: frames are read up to the damage, or one CaptureError."""
    rng = np.random.default_rng(7)
    broken = tmp_path / "broken"
    for path in CAPTURES:
        data = path.read_bytes()
        for k in range(6):
            broken.write_bytes(corrupt_file(data, rng))
            try:
                frames = list(read_frames(str(broken)))
            except CaptureError:
                continue  # a header no reader could use: one clear error
            if frames:
                packets = pa.Table.from_batches([decode(f) for f in frames])
                assert packets.num_rows == sum(len(f) for f in frames), (path.name, k)
