"""The packets of one flow, cut out of capture files as a new capture (an analyst's "download pcap").

A flow is found the way it was assembled: its (inner) 5-tuple in either
direction, and for GTP-U flows also its tunnel endpoints, within its first and
last packet's times.  Files are read and decoded in chunks like a replay, so a
large file costs time, not memory.  Frames are copied byte for byte with their
original timestamps; a capture whose frames have several link types is written
as pcapng (one interface per link type), otherwise as nanosecond pcap.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.capture import pcapng
from sensors.capture.frames import FrameBatch
from sensors.capture.pcap import global_header
from sensors.capture.source import read_frames
from sensors.decode import decode
from sensors.masks import true_mask


@dataclass(frozen=True)
class FlowMatch:
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    ip_proto: int
    first_ns: int
    last_ns: int
    tunnel_src_ip: str | None = None
    tunnel_dst_ip: str | None = None


def flow_frames(paths: Iterable[str], flow: FlowMatch) -> list[tuple[int, int, int, bytes]]:
    """(ts_ns, wire length, link type, frame bytes) of the flow's packets, in file order."""
    out: list[tuple[int, int, int, bytes]] = []
    for path in paths:
        reached = np.iinfo(np.int64).min
        for frames in read_frames(path):
            ts = frames.ts_ns
            # flows are assembled in forced time order: a packet older than one before it counts at the time
            # reached (``detection/flows/assembler.py``), so a flow's first_seen may be later than its packet's
            forced = np.maximum.accumulate(np.maximum(ts, reached)) if len(ts) else ts
            reached = int(forced[-1]) if len(ts) else reached
            window = (forced >= flow.first_ns) & (forced <= flow.last_ns)
            if not window.any():
                if len(ts) and ts.min() > flow.last_ns:
                    break  # files are in time order within themselves, nearly always
                continue
            out += frame_tuples(frames, _matches(decode(frames), flow) & window)
    return out


def matching_frames(frames: list[tuple[int, int, int, bytes]], flow: FlowMatch) -> list[tuple[int, int, int, bytes]]:
    """Those of ``frames`` (ts_ns, wire length, link type, bytes) that belong to the flow."""
    if not frames:
        return []
    batch = FrameBatch.of(frames)
    ts = batch.ts_ns
    return frame_tuples(batch, _matches(decode(batch), flow) & (ts >= flow.first_ns) & (ts <= flow.last_ns))


def frame_tuples(frames: FrameBatch, hit: np.ndarray | None = None) -> list[tuple[int, int, int, bytes]]:
    """(ts ns, wire length, link type, bytes) of the frames selected by ``hit`` (None: all)."""
    out = []
    for i in range(len(frames)) if hit is None else np.flatnonzero(hit):
        start = int(frames.data_off[i])
        out.append((int(frames.ts_ns[i]), int(frames.wirelen[i]), int(frames.link_type[i]),
                    frames.buf[start:start + int(frames.caplen[i])].tobytes()))
    return out


def packed(ip: str) -> bytes:
    """An address as the packet tables hold it: 16 bytes, IPv4 mapped as ::ffff:a.b.c.d."""
    addr = ipaddress.ip_address(ip)
    return addr.packed if addr.version == 6 else b"\0" * 10 + b"\xff\xff" + addr.packed


def _matches(packets: pa.RecordBatch, flow: FlowMatch) -> np.ndarray:
    ip_type = packets.schema.field("src_ip").type

    def address(ip: str) -> pa.Scalar:
        return pa.scalar(packed(ip), ip_type)

    sport, dport = pc.fill_null(packets["src_port"], 0), pc.fill_null(packets["dst_port"], 0)  # flows: 0 for ICMP

    def side(a: str, b: str, pa_: int, pb: int) -> pa.Array:
        m = pc.and_(pc.equal(packets["src_ip"], address(a)), pc.equal(packets["dst_ip"], address(b)))
        return pc.and_(m, pc.and_(pc.equal(sport, pa_), pc.equal(dport, pb)))

    m = pc.and_(pc.equal(packets["ip_proto"], flow.ip_proto),
                pc.or_(side(flow.src_ip, flow.dst_ip, flow.src_port, flow.dst_port),
                       side(flow.dst_ip, flow.src_ip, flow.dst_port, flow.src_port)))
    if flow.tunnel_src_ip and flow.tunnel_dst_ip:
        ends = pa.array([packed(flow.tunnel_src_ip), packed(flow.tunnel_dst_ip)], ip_type)
        m = pc.and_(m, pc.and_(pc.is_in(packets["tunnel_src_ip"], ends), pc.is_in(packets["tunnel_dst_ip"], ends)))
    return true_mask(m)


def write_capture(frames: list[tuple[int, int, int, bytes]]) -> bytes:
    """A pcap (one link type) or pcapng (several) of ``frames``."""
    link_types = sorted({lt for _, _, lt, _ in frames}) or [1]
    if len(link_types) == 1:
        parts = [global_header(link_types[0], pcapng.SNAPLEN, nanoseconds=True)]
        for ts, wire, _, data in frames:
            parts.append(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, len(data), wire) + data)
        return b"".join(parts)
    return _pcapng(frames, link_types)


def _pcapng(frames: list[tuple[int, int, int, bytes]], link_types: list[int]) -> bytes:
    index = {lt: i for i, lt in enumerate(link_types)}
    return b"".join([pcapng.shb_block(), *(pcapng.idb_block(lt) for lt in link_types),
                     *(pcapng.epb_block(index[lt], ts, wire, data) for ts, wire, lt, data in frames)])
