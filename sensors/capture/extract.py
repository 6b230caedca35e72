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

from sensors.capture.source import read_frames
from sensors.decode import decode


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
        for frames in read_frames(path):
            ts = frames.ts_ns
            window = (ts >= flow.first_ns) & (ts <= flow.last_ns)
            if not window.any():
                if len(ts) and ts.min() > flow.last_ns:
                    break  # files are in time order within themselves, nearly always
                continue
            packets = decode(frames)
            hit = np.asarray(_matches(packets, flow).fill_null(False)) & window
            for i in np.flatnonzero(hit):
                start = int(frames.data_off[i])
                out.append((int(ts[i]), int(frames.wirelen[i]), int(frames.link_type[i]),
                            frames.buf[start:start + int(frames.caplen[i])].tobytes()))
    return out


def packed(ip: str) -> bytes:
    """An address as the packet tables hold it: 16 bytes, IPv4 mapped as ::ffff:a.b.c.d."""
    addr = ipaddress.ip_address(ip)
    return addr.packed if addr.version == 6 else b"\0" * 10 + b"\xff\xff" + addr.packed


def _matches(packets: pa.RecordBatch, flow: FlowMatch) -> pa.Array:
    ip_type = packets.schema.field("src_ip").type

    def address(ip: str) -> pa.Scalar:
        return pa.scalar(packed(ip), ip_type)

    def side(a: str, b: str, pa_: int, pb: int) -> pa.Array:
        m = pc.and_(pc.equal(packets["src_ip"], address(a)), pc.equal(packets["dst_ip"], address(b)))
        return pc.and_(m, pc.and_(pc.equal(packets["src_port"], pa_), pc.equal(packets["dst_port"], pb)))

    m = pc.and_(pc.equal(packets["ip_proto"], flow.ip_proto),
                pc.or_(side(flow.src_ip, flow.dst_ip, flow.src_port, flow.dst_port),
                       side(flow.dst_ip, flow.src_ip, flow.dst_port, flow.src_port)))
    if flow.tunnel_src_ip and flow.tunnel_dst_ip:
        ends = pa.array([packed(flow.tunnel_src_ip), packed(flow.tunnel_dst_ip)], ip_type)
        m = pc.and_(m, pc.and_(pc.is_in(packets["tunnel_src_ip"], ends), pc.is_in(packets["tunnel_dst_ip"], ends)))
    return m


def write_capture(frames: list[tuple[int, int, int, bytes]]) -> bytes:
    """A pcap (one link type) or pcapng (several) of ``frames``."""
    link_types = sorted({lt for _, _, lt, _ in frames}) or [1]
    if len(link_types) == 1:
        parts = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, link_types[0])]
        for ts, wire, _, data in frames:
            parts.append(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, len(data), wire) + data)
        return b"".join(parts)
    return _pcapng(frames, link_types)


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def _pcapng(frames: list[tuple[int, int, int, bytes]], link_types: list[int]) -> bytes:
    tsresol = struct.pack("<HHB", 9, 1, 9) + b"\0" * 3 + b"\0" * 4  # if_tsresol = 10^-9, then opt_endofopt
    parts = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    parts += [_block(1, struct.pack("<HHI", lt, 0, 262144) + tsresol) for lt in link_types]
    index = {lt: i for i, lt in enumerate(link_types)}
    for ts, wire, lt, data in frames:
        parts.append(_block(6, struct.pack("<IIIII", index[lt], ts >> 32, ts & 0xFFFFFFFF, len(data), wire) + data))
    return b"".join(parts)
