"""Capture readers: counts against capinfos, formats, damage, chunking."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from sensors.capture import pcap
from sensors.capture.source import CaptureError, expand_inputs, read_frames
from sensors.capture.walk import chain_walk, sequential_walk
from tests.conftest import PCAPS, ROOT

README = (ROOT / "pcaps" / "README.md").read_text()
COUNTS = {m.group(1): int(m.group(2)) for m in re.finditer(r"\| `shared/([^`]+)` \|[^|]+\|[^|]+\|[^|]+\| (\d+) \|", README)}


def count(path: Path, chunk: int = 32 << 20) -> tuple[int, list]:
    damages: list = []
    return sum(len(b) for b in read_frames(str(path), chunk, damages=damages)), damages


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_packet_counts_match_capinfos(name: str) -> None:
    n, damages = count(PCAPS / name)
    assert n == COUNTS[name]
    assert damages == []


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_small_chunks_give_the_same_frames(name: str) -> None:
    big = [(b.ts_ns.copy(), b.caplen.copy()) for b in read_frames(str(PCAPS / name))]
    small = [(b.ts_ns.copy(), b.caplen.copy()) for b in read_frames(str(PCAPS / name), chunk_bytes=4096)]
    assert np.array_equal(np.concatenate([x[0] for x in big]), np.concatenate([x[0] for x in small]))
    assert np.array_equal(np.concatenate([x[1] for x in big]), np.concatenate([x[1] for x in small]))


def test_parallel_walk_equals_sequential_walk() -> None:
    data = (PCAPS / "5greplay_oai.pcap").read_bytes()
    buf = np.zeros(len(data) + 256, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    hdr = pcap.parse_global_header(data[:24])
    assert hdr is not None
    fmt = pcap.PcapRecords(hdr)
    body = buf[24:]
    fast = chain_walk(fmt, body, 0, len(data) - 24, segment_bytes=2048, window=256)
    slow = sequential_walk(fmt, body, 0, len(data) - 24)
    assert len(fast.offsets) == 753
    assert np.array_equal(fast.offsets, slow.offsets)


def test_gzip_and_directory_and_glob(tmp_path: Path) -> None:
    src = PCAPS / "arkime_gtp-u.pcap"
    gz = tmp_path / "a.pcap.gz"
    with gzip.open(gz, "wb") as f:
        f.write(src.read_bytes())
    shutil.copy(PCAPS / "zeek_tunnels_vxlan.pcap", tmp_path / "b.pcap")
    (tmp_path / "notes.txt").write_text("not a capture")
    files = expand_inputs([str(tmp_path)])
    assert sorted(Path(f).name for f in files) == ["a.pcap.gz", "b.pcap"]
    assert count(gz)[0] == 102
    assert len(expand_inputs([str(tmp_path / "*.pcap*")])) == 2


def test_nanosecond_and_big_endian_pcap(tmp_path: Path) -> None:
    data = bytearray((PCAPS / "arkime_gtp-u.pcap").read_bytes())
    first_ts = next(iter(read_frames(str(PCAPS / "arkime_gtp-u.pcap")))).ts_ns[:3].copy()
    # rewrite as big-endian nanosecond pcap
    out = bytearray(b"\xa1\xb2\x3c\x4d")
    major, minor, zone, sig, snap, link = __import__("struct").unpack("<HHiIII", data[4:24])
    out += __import__("struct").pack(">HHiIII", major, minor, zone, sig, snap, link)
    pos = 24
    while pos < len(data):
        s, us, cap, orig = __import__("struct").unpack("<IIII", data[pos : pos + 16])
        out += __import__("struct").pack(">IIII", s, us * 1000, cap, orig) + data[pos + 16 : pos + 16 + cap]
        pos += 16 + cap
    p = tmp_path / "be_ns.pcap"
    p.write_bytes(bytes(out))
    batch = next(iter(read_frames(str(p))))
    assert len(batch) == 102
    assert np.array_equal(batch.ts_ns[:3], first_ts)


def test_truncated_file_keeps_everything_before_the_damage(tmp_path: Path) -> None:
    data = (PCAPS / "5greplay_oai.pcap").read_bytes()
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[: len(data) // 2])
    n, damages = count(p)
    assert 300 < n < 753
    assert len(damages) == 1 and "truncated" in damages[0].reason and damages[0].offset > 0


def test_corrupt_record_is_reported_with_offset(tmp_path: Path) -> None:
    data = bytearray((PCAPS / "arkime_gtp-u.pcap").read_bytes())
    # the 11th record's captured length becomes absurd
    pos = 24
    for _ in range(10):
        pos += 16 + int.from_bytes(data[pos + 8 : pos + 12], "little")
    data[pos + 8 : pos + 12] = (10**8).to_bytes(4, "little")
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(data))
    n, damages = count(p)
    assert n == 10
    assert damages[0].offset == pos and "captured length" in damages[0].reason


def test_not_a_capture_is_one_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_text("<html>")
    with pytest.raises(CaptureError, match="not a pcap or pcapng capture"):
        expand_inputs([str(p)])
    with pytest.raises(CaptureError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.pcap")])


def test_pcapng_interfaces_and_link_types() -> None:
    frames = list(read_frames(str(PCAPS / "5greplay_ue_authetication.pcapng")))
    assert sum(len(b) for b in frames) == 13
    assert json.dumps(sorted({int(x) for b in frames for x in b.link_type})) != "[65535]"


def test_parallel_walk_on_a_large_generated_capture() -> None:
    from tests.conftest import capture_path

    data = capture_path("generated_mixed_10k.pcap").read_bytes()
    buf = np.zeros(len(data) + 256, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    hdr = pcap.parse_global_header(data[:24])
    assert hdr is not None
    fmt = pcap.PcapRecords(hdr, ts_hint=int.from_bytes(data[24:28], "little"))
    fast = chain_walk(fmt, buf[24:], 0, len(data) - 24)  # default segments: the parallel path
    slow = sequential_walk(fmt, buf[24:], 0, len(data) - 24)
    assert len(fast.offsets) == 10_000
    assert np.array_equal(fast.offsets, slow.offsets)


def _record_offsets(path: Path) -> np.ndarray:
    """Every record's file offset, one record at a time (the reference walk)."""
    data = path.read_bytes()
    buf = np.zeros(len(data) + 256, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    hdr = pcap.parse_global_header(data[:24])
    assert hdr is not None
    return sequential_walk(pcap.PcapRecords(hdr), buf, 24, len(data)).offsets


@pytest.mark.parametrize("chunk_bytes", [700, 4096, 65536])
def test_a_pcap_file_is_read_in_fixed_chunks_whole(chunk_bytes: int) -> None:
    """Chunk k holds the records starting in its byte range, whatever their length: together, every record
    once, in order (700-byte chunks: many records run past their chunk, some chunks have none)."""
    from tests.conftest import capture_path

    for path in (PCAPS / "5greplay_oai.pcap", PCAPS / "arkime_gtp-u.pcap", capture_path("generated_mixed_10k.pcap")):
        read = np.concatenate([b.file_offset.copy() for b in read_frames(str(path), chunk_bytes)])
        assert np.array_equal(read, _record_offsets(path)), path.name


def test_any_process_finds_a_chunks_first_record_by_itself() -> None:
    """Given a chunk alone (no start), the resynchronisation finds the record the walk in order begins at."""
    from sensors.capture.chunks import PcapChunks
    from tests.conftest import capture_path

    for path in (PCAPS / "5greplay_oai.pcap", capture_path("generated_mixed_10k.pcap")):
        chunks = PcapChunks(str(path), 16384)
        start = 24
        for k in range(len(chunks)):
            alone, in_order = chunks.chunk(k), chunks.chunk(k, start)
            assert alone.start == in_order.start == start and alone.next_start == in_order.next_start
            assert alone.frames is not None and in_order.frames is not None
            assert np.array_equal(alone.frames.file_offset, in_order.frames.file_offset)
            start = in_order.next_start
        assert start == path.stat().st_size


def forged_chunk_start(tmp_path: Path) -> tuple[Path, int, int]:
    """A capture whose second 4 KiB chunk begins inside a packet that carries four forged record headers
    (each with a plausible time and length, chained): (path, where a chunk alone would start, the truth)."""
    import struct

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    ts = 1_700_000_000
    forged = b"".join(struct.pack("<IIII", ts, 0, 16, 16) + bytes(range(16)) for _ in range(4))
    boundary = 24 + 4096
    first_payload = boundary - (24 + 16 + 42)  # the forged headers start exactly at the chunk's start
    big = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=6000)
                / Raw(b"\x00" * first_payload + forged + b"\x00" * 2000))
    small = bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=7000, dport=53) / Raw(b"q" * 40))
    records = [struct.pack("<IIII", ts, 0, len(big), len(big)) + big]
    records += [struct.pack("<IIII", ts + 1 + i, 0, len(small), len(small)) + small for i in range(300)]
    path = tmp_path / "forged.pcap"
    path.write_bytes(pcap.global_header() + b"".join(records))
    return path, boundary, 24 + len(records[0])


def test_a_forged_chunk_start_is_caught(tmp_path: Path) -> None:
    from sensors.capture.chunks import PcapChunks

    path, forged_at, truth = forged_chunk_start(tmp_path)
    chunks = PcapChunks(str(path), 4096)
    assert chunks.chunk(1).start == forged_at != truth  # what a process given the chunk alone finds
    in_order = chunks.chunk(0, 24)
    assert in_order.next_start == truth
    read = np.concatenate([b.file_offset.copy() for b in read_frames(str(path), 4096)])
    assert np.array_equal(read, _record_offsets(path)) and len(read) == 301
