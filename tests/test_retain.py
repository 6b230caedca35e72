"""Rolling packet retention: pcapng files any reader opens, rotated and limited, indexed by flow key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.flows.keys import flow_key_hash, packet_keys
from ingest.replay import replay
from ingest.retention import Retention, flow_packets
from sensors.capture.extract import FlowMatch
from sensors.capture.frames import FrameBatch
from sensors.capture.retain import (
    PacketRetention,
    RetainedFile,
    RetentionPolicy,
    epb_blocks,
    retained_files,
    retained_frames,
)
from sensors.capture.seal import Keyring, SealError, open_sealed, rotate_keyring
from sensors.capture.source import read_frames
from sensors.capture.walk import PAD
from sensors.decode import decode
from tests.conftest import PCAPS, frame_tuples

CAPTURES = [PCAPS / "5greplay_oai.pcap", PCAPS / "arkime_gtp-u.pcap", PCAPS / "zeek_ssh_sshguess.pcap"]


def ring_layout(frames: FrameBatch, mac: int = 66, tagged_every: int = 0) -> FrameBatch:
    """The frames laid out as a live capture's batch: each after a ring record header (``mac`` bytes in,
    records 8-byte aligned); every ``tagged_every``-th frame starts 4 bytes earlier, as one whose VLAN tag
    the reader put back does."""
    caplen = frames.caplen.copy()
    stride = (mac + caplen + 7) & ~7
    record = np.r_[0, np.cumsum(stride)[:-1]]
    buf = np.full(int(stride.sum()) + PAD, 0xAB, dtype=np.uint8)  # header bytes: not zero, as in a ring
    data_off = record + mac
    if tagged_every:
        data_off[::tagged_every] -= 4
    for i in range(len(caplen)):
        start = int(frames.data_off[i])
        buf[data_off[i]:data_off[i] + caplen[i]] = frames.buf[start:start + caplen[i]]
    return FrameBatch(buf=buf, data_off=data_off, caplen=caplen, wirelen=frames.wirelen.copy(),
                      ts_ns=frames.ts_ns.copy(), link_type=frames.link_type.copy(),
                      interface_id=frames.interface_id.copy(), file_offset=frames.file_offset.copy())


def keep(policy: RetentionPolicy, paths: list[Path], layout: bool = True, chunk_bytes: int = 64 << 10) -> None:
    writer = PacketRetention(policy, "p1")
    for p in paths:
        for frames in read_frames(str(p), chunk_bytes=chunk_bytes):
            batch = ring_layout(frames, tagged_every=3) if layout else frames
            writer.write(batch, np.arange(1, len(batch) + 1, dtype=np.uint64))
    writer.close()


@pytest.mark.parametrize("layout", [True, False], ids=["ring-records", "file-records"])
def test_retained_files_hold_every_frame_and_other_tools_read_them(tmp_path: Path, layout: bool) -> None:
    keep(RetentionPolicy(tmp_path), CAPTURES, layout)
    files = retained_files(tmp_path)
    assert len(files) == 1 and files[0].last_ns is not None
    assert frame_tuples([f.path for f in files]) == frame_tuples(CAPTURES)
    tshark = shutil.which("tshark")
    if tshark:  # installed by scripts/setup.sh
        out = subprocess.run([tshark, "-r", str(files[0].path), "-T", "fields", "-e", "frame.len"],
                             capture_output=True, text=True, check=True)
        assert [int(x) for x in out.stdout.split()] == [f[1] for f in frame_tuples(CAPTURES)]


def test_ring_records_are_written_without_a_block_per_frame(tmp_path: Path) -> None:
    frames = next(read_frames(str(CAPTURES[2])))
    ring = ring_layout(frames, tagged_every=5)
    segments, offsets = epb_blocks(ring, np.zeros(len(ring), dtype=np.uint32))
    assert len(segments) == 1  # one copy of the buffer, headers scattered into the gaps
    blob = segments[0].tobytes()
    for i in range(len(ring)):  # each index offset points at its frame's block
        o = int(offsets[i])
        assert int.from_bytes(blob[o:o + 4], "little") == 6
        caplen = int.from_bytes(blob[o + 20:o + 24], "little")
        start = int(ring.data_off[i])
        assert blob[o + 28:o + 28 + caplen] == ring.buf[start:start + caplen].tobytes()


def test_rotation_limits_and_oldest_first(tmp_path: Path) -> None:
    big = PCAPS / "5g-attacks-clem272001_Dataset_2_capture_2_pfcp-DoS.pcap"
    policy = RetentionPolicy(tmp_path, max_bytes=400_000, file_bytes=100_000, file_seconds=3600)
    keep(policy, [big])
    files = retained_files(tmp_path)
    assert len(files) >= 2 and sum(f.bytes for f in files) <= 400_000 + 100_000  # a file may overshoot by a batch
    kept = frame_tuples([f.path for f in files])
    everything = frame_tuples([big])
    assert kept == everything[-len(kept):] and len(kept) < len(everything)  # the newest, none missing between

    by_age = tmp_path / "age"
    span_s = (everything[-1][0] - everything[0][0]) / 1e9
    keep(RetentionPolicy(by_age, max_age_s=span_s / 4, file_bytes=1 << 30, file_seconds=span_s / 10), [big])
    aged = retained_files(by_age)
    assert aged and all(f.last_ns is not None and f.last_ns >= everything[-1][0] - span_s / 4 * 1e9 - span_s / 10 * 1e9
                        for f in aged[:-1])


def test_open_files_are_searchable_and_a_dead_writers_file_is_finished(tmp_path: Path) -> None:
    policy = RetentionPolicy(tmp_path)
    writer = PacketRetention(policy, "p999999999")  # no such process
    frames = next(read_frames(str(CAPTURES[2])))
    writer.write(ring_layout(frames), np.full(len(frames), 7, dtype=np.uint64))
    (live,) = retained_files(tmp_path)
    assert live.last_ns is None and live.path.name.endswith("-live-p999999999.pcapng")
    found = retained_frames(tmp_path, 7, 0, 2**62)
    assert len(found) == len(frames) and not retained_frames(tmp_path, 8, 0, 2**62)
    writer._out.close()  # type: ignore[union-attr]  # the writer is killed: its file stays "live"
    PacketRetention(policy, "p1").enforce()
    (finished,) = retained_files(tmp_path)
    assert finished.last_ns == int(frames.ts_ns.max())
    assert len(retained_frames(tmp_path, 7, 0, 2**62)) == len(frames)


def test_a_flow_record_finds_its_packets_by_key(tmp_path: Path) -> None:
    """The hash computed from a stored flow row is the one its packets were indexed by, tunnels included."""
    retention = Retention(RetentionPolicy(tmp_path / "kept"))
    for p in CAPTURES:
        for frames in read_frames(str(p)):
            retention.write(ring_layout(frames), decode(frames))
    retention.close()
    replay([str(p) for p in CAPTURES], tmp_path / "out", processes=1)
    table = pq.read_table(tmp_path / "out" / "flows.parquet")
    for name in ("first_seen", "last_seen"):  # ns, exactly
        table = table.set_column(table.schema.get_field_index(name), name, table.column(name).cast(pa.int64()))
    flows = table.to_pylist()
    assert any(f["tunnel_type"] == "gtpu" for f in flows)
    for flow in flows:
        match = FlowMatch(flow["src_ip"], flow["dst_ip"], int(flow["src_port"] or 0), int(flow["dst_port"] or 0),
                          int(flow["ip_proto"]), flow["first_seen"], flow["last_seen"],
                          flow["tunnel_src_ip"], flow["tunnel_dst_ip"])
        got = flow_packets(tmp_path / "kept", flow, match)
        assert len(got) == flow["bidirectional_packets"], flow
        assert sum(g[1] for g in got) == flow["bidirectional_bytes"]


def test_key_hash_of_a_flow_row_matches_its_packets() -> None:
    frames = next(read_frames(str(CAPTURES[1])))
    packets = decode(frames)
    keys = packet_keys(packets)
    row = packets.slice(int(keys.rows[0]), 1).to_pylist()[0]
    flow = {"src_ip": _text(row["src_ip"]), "dst_ip": _text(row["dst_ip"]), "src_port": row["src_port"],
            "dst_port": row["dst_port"], "ip_proto": row["ip_proto"], "vlan_id": row["vlan_id"],
            "tunnel_type": "gtpu", "tunnel_src_ip": _text(row["tunnel_src_ip"]),
            "tunnel_dst_ip": _text(row["tunnel_dst_ip"])}
    assert flow_key_hash(flow) == int(keys.hash[0])
    swapped = {**flow, "src_ip": flow["dst_ip"], "dst_ip": flow["src_ip"], "src_port": flow["dst_port"],
               "dst_port": flow["src_port"], "tunnel_src_ip": flow["tunnel_dst_ip"],
               "tunnel_dst_ip": flow["tunnel_src_ip"]}
    assert flow_key_hash(swapped) == flow_key_hash(flow)


def _text(raw: bytes | None) -> str | None:
    import ipaddress

    if raw is None:
        return None
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def _keyring(path: Path) -> Keyring:
    rotate_keyring(path)
    return Keyring.from_file(path)


def _export(files: list[RetainedFile], keyring: Keyring, out: Path) -> list[Path]:
    plain = []
    for i, f in enumerate(files):
        target = out / f"plain-{i}.pcapng"
        target.write_bytes(b"".join(open_sealed(f.path, keyring)))
        plain.append(target)
    return plain


def test_sealed_files_hide_the_packets_and_open_with_the_key(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path / "keyring")
    kept = tmp_path / "kept"
    keep(RetentionPolicy(kept, keyring=keyring, file_bytes=200_000), CAPTURES)
    files = retained_files(kept)
    assert len(files) > 1 and all(f.sealed and f.path.name.endswith(".pcapng.sealed") for f in files)
    assert (tmp_path / "keyring").stat().st_mode & 0o777 == 0o600
    # no frame's bytes appear in the files: a 32-byte run of each of 200 frames, searched for
    blob = b"".join(f.path.read_bytes() for f in files)
    frames = frame_tuples(CAPTURES)
    runs = [f[3][14:46] for f in frames[::max(1, len(frames) // 200)] if len(f[3]) >= 46]
    assert runs and not any(r in blob for r in runs)
    # the key holder gets every frame back; a flow lookup decrypts what it needs
    assert sorted(frame_tuples(_export(files, keyring, tmp_path))) == sorted(frames)
    keep(RetentionPolicy(tmp_path / "plain", file_bytes=200_000), CAPTURES)
    for h in (1, 3, 50):  # keep() gives a batch's frame i hash i + 1
        got = retained_frames(kept, h, 0, 2**62, keyring)
        assert got and got == retained_frames(tmp_path / "plain", h, 0, 2**62)
    with pytest.raises(SealError, match="encrypted"):
        retained_frames(kept, 3, 0, 2**62)
    with pytest.raises(SealError, match="not in the evidence keyring"):
        retained_frames(kept, 3, 0, 2**62, _keyring(tmp_path / "other"))


def test_an_altered_sealed_file_fails_authentication(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path / "keyring")
    keep(RetentionPolicy(tmp_path / "kept", keyring=keyring), CAPTURES[2:])
    (f,) = retained_files(tmp_path / "kept")
    data = bytearray(f.path.read_bytes())
    data[len(data) // 2] ^= 1
    f.path.write_bytes(bytes(data))
    with pytest.raises(SealError, match="fails authentication"):
        list(open_sealed(f.path, keyring))


def test_rotation_then_reseal_keeps_the_index_valid_and_retires_the_old_key(tmp_path: Path) -> None:
    ring = tmp_path / "keyring"
    old = _keyring(ring)
    kept = tmp_path / "kept"
    keep(RetentionPolicy(kept, keyring=old, file_bytes=200_000), CAPTURES)
    before = [retained_frames(kept, h, 0, 2**62, old) for h in (1, 5, 40)]
    assert evidence_cli(["rotate", str(ring)]) == 0
    assert evidence_cli(["reseal", str(kept), "--keyring", str(ring)]) == 0
    newest = ring.read_text().splitlines()[0]
    ring.write_text(newest + "\n")  # the old key is gone
    new = Keyring.from_file(ring)
    assert new.current != old.current
    assert [retained_frames(kept, h, 0, 2**62, new) for h in (1, 5, 40)] == before
    assert sorted(frame_tuples(_export(retained_files(kept), new, tmp_path))) == sorted(frame_tuples(CAPTURES))


def test_a_killed_writers_sealed_file_keeps_its_complete_records(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path / "keyring")
    policy = RetentionPolicy(tmp_path, keyring=keyring)
    writer = PacketRetention(policy, "p999999999")
    batches = list(read_frames(str(CAPTURES[0]), chunk_bytes=16 << 10))[:3]
    for frames in batches:
        writer.write(ring_layout(frames), np.full(len(frames), 7, dtype=np.uint64))
    writer._out.close()  # type: ignore[union-attr]
    (live,) = retained_files(tmp_path)
    with open(live.path, "r+b") as f:  # the last record cut short
        f.truncate(live.path.stat().st_size - 100)
    PacketRetention(policy, "p1").enforce()
    (finished,) = retained_files(tmp_path)
    assert finished.last_ns is not None and finished.sealed
    assert len(retained_frames(tmp_path, 7, 0, 2**62, keyring)) == sum(len(b) for b in batches[:2])


def evidence_cli(argv: list[str]) -> int:
    from console.cli import main
    return main(["evidence", *argv])
