"""Decoding in one, two or three processes gives the same output, byte for byte."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ingest.replay import replay
from ingest.workers import HELPER_QUEUE, _hand_over, _take_over, can_fork, helper_for
from sensors.capture.source import CaptureFiles, FrameMapper
from tests.conftest import PCAPS, capture_path

pytestmark = pytest.mark.skipif(not can_fork(), reason="needs fork, /dev/shm and 2+ cores")


def _inputs(tmp_path: Path) -> list[str]:
    """Mapped pcap and pcapng files, a gzip file (not mappable) and a damaged file."""
    gz = tmp_path / "gtp.pcap.gz"
    with open(PCAPS / "arkime_gtp-u.pcap", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    cut = tmp_path / "cut.pcap"
    data = (PCAPS / "5greplay_oai.pcap").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return [str(capture_path("generated_mixed_10k.pcap")), str(PCAPS / "5greplay_ue_authetication.pcapng"),
            str(gz), str(cut)]


@pytest.mark.parametrize("processes", [2, 3])
def test_forked_decoders_give_the_in_process_result(tmp_path: Path, processes: int) -> None:
    inputs = _inputs(tmp_path)
    # small chunks: many batches, so every decoder gets several, the file tails included
    one = replay(inputs, tmp_path / "one", chunk_bytes=64 << 10, processes=1)
    many = replay(inputs, tmp_path / "many", chunk_bytes=64 << 10, processes=processes)
    assert one.packets == many.packets > 10_000
    assert one.traffic.decode_status == many.traffic.decode_status
    assert [(d.path, d.offset, d.reason) for d in one.damages] == [(d.path, d.offset, d.reason) for d in many.damages]
    assert len(one.damages) == 1 and "truncated" in one.damages[0].reason
    a, b = pq.read_table(tmp_path / "one" / "flows.parquet"), pq.read_table(tmp_path / "many" / "flows.parquet")
    assert a.num_rows > 500 and a.equals(b)
    eve_one = (tmp_path / "one" / "eve.json").read_text().splitlines()
    eve_many = (tmp_path / "many" / "eve.json").read_text().splitlines()
    assert eve_one[:-1] == eve_many[:-1]  # the last line is the stats event, with the run time in it


def test_plain_files_reach_helper_decoders_by_mapping(tmp_path: Path) -> None:
    """A helper decoder gets a batch of a plain pcap or pcapng file as a frame index over the same file
    (no bytes copied); only a gzip file's batches, which exist only in the reader, are decoded there."""
    inputs = _inputs(tmp_path)
    mapper = FrameMapper()
    mapped: dict[int, list[bool]] = {}
    for frames, ref in CaptureFiles(inputs, 64 << 10).batches([]):
        mapped.setdefault(frames.file_index, []).append(ref is not None)
        if ref is not None:
            again = mapper.attach(ref)
            ends = frames.data_off + frames.caplen
            assert np.array_equal(again.data_off, frames.data_off)
            assert bytes(again.buf[: int(ends[-1])]) == bytes(frames.buf[: int(ends[-1])])
    assert sorted(mapped) == [0, 1, 2, 3]
    assert all(mapped[0]) and all(mapped[1]) and all(mapped[3]), "pcap and pcapng batches are mappable"
    assert not any(mapped[2]), "gzip batches are not"


def test_the_reader_decodes_only_while_every_helper_has_a_batch_in_reserve() -> None:
    assert helper_for([], live=False) is None  # no helpers: the reader decodes everything
    assert helper_for([0], live=False) == 0
    assert helper_for([HELPER_QUEUE - 1], live=False) == 0  # one in hand: the next waits in reserve
    assert helper_for([HELPER_QUEUE], live=False) is None  # the reader's turn: the helper is not kept waiting
    assert helper_for([HELPER_QUEUE, 1, 0], live=False) == 2  # the helper with the fewest
    assert helper_for([HELPER_QUEUE, HELPER_QUEUE + 3], live=True) == 0  # a live reader only captures


def test_a_frame_index_crosses_to_a_helper_in_a_file(tmp_path: Path) -> None:
    """The reader hands a batch's frame index over in a file of the work directory (through the pipe the
    ~3 MB would block until the helper read it), so two can wait at once; the helper gets it back whole and
    removes the file."""
    frames = [ref for _, ref in CaptureFiles([str(capture_path("generated_mixed_10k.pcap"))], 64 << 10).batches([])]
    assert len(frames) >= 2 and all(ref is not None for ref in frames)
    paths = [_hand_over(str(tmp_path), n, ref) for n, ref in enumerate(frames[:2]) if ref is not None]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in paths)
    back = _take_over(paths[1])
    assert frames[1] is not None and np.array_equal(back.frames.data_off, frames[1].frames.data_off)
    assert back.path == frames[1].path and not Path(paths[1]).exists()


@pytest.mark.parametrize("processes", [2, 3])
def test_plain_pcap_chunks_decoded_apart_give_the_in_process_result(tmp_path: Path, processes: int) -> None:
    """Plain pcap files are cut in fixed chunks that each decoder walks and decodes itself: the same output as
    one process, damage included (a truncated file, a corrupt record), and a chunk whose start a decoder got
    wrong (forged record headers inside a packet) is read again in order."""
    from tests.test_capture import forged_chunk_start

    bad = bytearray((PCAPS / "arkime_gtp-u.pcap").read_bytes())
    pos = 24
    for _ in range(40):
        pos += 16 + int.from_bytes(bad[pos + 8 : pos + 12], "little")
    bad[pos + 8 : pos + 12] = (10**8).to_bytes(4, "little")
    (tmp_path / "bad.pcap").write_bytes(bytes(bad))
    cut = tmp_path / "cut.pcap"
    data = (PCAPS / "5greplay_oai.pcap").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    forged, _, _ = forged_chunk_start(tmp_path)
    inputs = [str(PCAPS / "5greplay_oai.pcap"), str(tmp_path / "bad.pcap"), str(cut), str(forged)]
    assert CaptureFiles(inputs, 4096).chunked() is not None
    one = replay(inputs, tmp_path / "one", chunk_bytes=4096, processes=1)
    many = replay(inputs, tmp_path / "many", chunk_bytes=4096, processes=processes)
    assert one.packets == many.packets > 1_000
    assert [(d.path, d.offset, d.reason) for d in one.damages] == [(d.path, d.offset, d.reason) for d in many.damages]
    assert sorted(d.reason.split(":")[0] for d in one.damages) == ["corrupt record header", "truncated record"]
    a, b = pq.read_table(tmp_path / "one" / "flows.parquet"), pq.read_table(tmp_path / "many" / "flows.parquet")
    assert a.num_rows > 50 and a.equals(b)
    eve_one = (tmp_path / "one" / "eve.json").read_text().splitlines()
    assert eve_one[:-1] == (tmp_path / "many" / "eve.json").read_text().splitlines()[:-1]


def test_thin_keyed_tables_are_read_again_where_the_flow_table_needs_more(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay's decoders send the flow table only the keyed packets it may need; a batch whose flows reach the
    active timeout, or that starts before the table's clock, is read again in full: the same flows and alerts as
    one process makes."""
    import ingest.workers as workers

    reread = workers._reread
    calls: list[int] = []

    def counted(chunks, k, start):  # type: ignore[no-untyped-def]
        calls.append(k)
        return reread(chunks, k, start)

    monkeypatch.setattr(workers, "_reread", counted)
    # the generated capture with its second half 5 s earlier: one batch begins before the time reached
    data = bytearray(capture_path("generated_mixed_10k.pcap").read_bytes())
    pos, records = 24, 0
    while pos + 16 <= len(data):
        if records >= 5_000:
            seconds = int.from_bytes(data[pos : pos + 4], "little") - 5
            data[pos : pos + 4] = seconds.to_bytes(4, "little")
        pos += 16 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        records += 1
    shifted = tmp_path / "shifted.pcap"
    shifted.write_bytes(bytes(data))
    for name, path, timeouts in (("jump", shifted, {}), ("active", capture_path("generated_mixed_10k.pcap"),
                                                        {"idle_timeout_s": 2.0, "active_timeout_s": 5.0})):
        calls.clear()
        one = replay([str(path)], tmp_path / f"{name}1", chunk_bytes=64 << 10, processes=1, **timeouts)
        two = replay([str(path)], tmp_path / f"{name}2", chunk_bytes=64 << 10, processes=2, **timeouts)
        assert calls, name  # read again, at least once
        assert one.packets == two.packets
        for table in ("flows", "alerts", "proto_pfcp"):
            a, b = pq.read_table(tmp_path / f"{name}1" / f"{table}.parquet"), pq.read_table(
                tmp_path / f"{name}2" / f"{table}.parquet")
            assert a.equals(b), (name, table)
        assert (tmp_path / f"{name}1" / "eve.json").read_text().splitlines()[:-1] == \
            (tmp_path / f"{name}2" / "eve.json").read_text().splitlines()[:-1]


@pytest.mark.parametrize("gzipped", [False, True])
def test_decoders_start_at_the_call_and_stop_when_their_batches_are_dropped(tmp_path: Path, gzipped: bool) -> None:
    """The decoder processes start before the first batch is asked for (the caller's setup overlaps their first
    batches), and an iterator dropped unread stops them and removes their work directory."""
    import gc
    import multiprocessing as mp
    import os

    from ingest.workers import SHM_DIR, packet_batches_forked

    capture = str(capture_path("generated_mixed_10k.pcap"))
    if gzipped:  # read in order by a reader process, not in chunks
        capture = _inputs(tmp_path)[2]
    before = {n for n in os.listdir(SHM_DIR) if n.startswith("liaowang-")}
    batches = packet_batches_forked(CaptureFiles([capture], 64 << 10), [], decoders=2)
    started = [p for p in mp.active_children() if p.is_alive()]
    workdirs = {n for n in os.listdir(SHM_DIR) if n.startswith("liaowang-")} - before
    assert len(started) == 2 and len(workdirs) == 1
    del batches
    gc.collect()
    assert not [p for p in started if p.is_alive()]
    assert not (workdirs & set(os.listdir(SHM_DIR)))


def _die(packets: object) -> dict[str, object]:
    """A transform that ends its decoder process at once, as a kill would: it sends no message."""
    import os

    os._exit(3)


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_decoder_that_dies_without_a_word_is_an_error_not_a_hang(tmp_path: Path, gzipped: bool) -> None:
    """A decoder process that exits without sending its batch (killed, out of memory) ends the iteration with an
    error naming it, for chunked and reader inputs, and its work directory goes."""
    import os

    from ingest.workers import SHM_DIR, packet_batches_forked

    capture = _inputs(tmp_path)[2] if gzipped else str(capture_path("generated_mixed_10k.pcap"))
    before = {n for n in os.listdir(SHM_DIR) if n.startswith("liaowang-")}
    with pytest.raises(RuntimeError, match="exited with code 3"):
        for _ in packet_batches_forked(CaptureFiles([capture], 64 << 10), [], transform=_die, decoders=2):
            pass
    assert {n for n in os.listdir(SHM_DIR) if n.startswith("liaowang-")} == before
