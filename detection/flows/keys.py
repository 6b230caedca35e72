"""Per-packet flow keys: the columns flows need, as numpy, and a 64-bit key hash."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.schema import TunnelType

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
TUNNEL_GTPU = int(TunnelType.GTPU)


#: integer packet columns the flows need: PacketKeys attribute -> packet column
NUMERIC = {
    "src_port": "src_port",
    "dst_port": "dst_port",
    "ip_proto": "ip_proto",
    "ip_version": "ip_version",
    "icmp_type": "icmp_type",
    "icmp_code": "icmp_code",
    "vlan_id": "vlan_id",
    "tunnel_type": "tunnel_type",
    "teid": "teid",
    "qfi": "gtpu_qfi",
    "frame_len": "frame_len",
    "payload_len": "payload_len",
    "tcp_flags": "tcp_flags",
    "app_proto": "app_proto",
    "decode_status": "decode_status",
}


@dataclass
class PacketKeys:
    """Columns of the IP packets of one batch (``rows`` index the batch)."""

    rows: np.ndarray
    hash: np.ndarray  # uint64 key hash
    fwd: np.ndarray  # bool: src is the canonical 'low' endpoint
    ts_ns: np.ndarray
    src: np.ndarray  # (n, 2) uint64 address halves
    dst: np.ndarray
    tunnel_src: np.ndarray
    tunnel_dst: np.ndarray
    vlan_valid: np.ndarray
    teid_valid: np.ndarray  # a GTP-U TEID of a decapsulated packet
    qfi_valid: np.ndarray
    server_name: pa.Array  # string, null where none
    src_port: np.ndarray
    dst_port: np.ndarray
    ip_proto: np.ndarray
    ip_version: np.ndarray
    icmp_type: np.ndarray
    icmp_code: np.ndarray
    vlan_id: np.ndarray
    tunnel_type: np.ndarray
    teid: np.ndarray
    qfi: np.ndarray
    frame_len: np.ndarray
    payload_len: np.ndarray
    tcp_flags: np.ndarray
    app_proto: np.ndarray
    decode_status: np.ndarray


def _num(col: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    arr = pc.fill_null(col, 0) if col.null_count else col
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)[rows]


def _valid(col: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    return np.asarray(col.is_valid().to_numpy(zero_copy_only=False))[rows]


def _ip(col: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    raw = np.frombuffer(col.buffers()[1], dtype=">u8", count=2 * (len(col) + col.offset))
    return raw.reshape(-1, 2)[col.offset :][rows].astype(np.uint64)


def _mix(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    h = (h ^ x.astype(np.uint64)) * _M1
    return h ^ (h >> np.uint64(31))


def _less(a: np.ndarray, b: np.ndarray, pa_: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """(address a, port pa) <= (address b, port pb), addresses as (n, 2) halves."""
    return (a[:, 0] < b[:, 0]) | (
        (a[:, 0] == b[:, 0]) & ((a[:, 1] < b[:, 1]) | ((a[:, 1] == b[:, 1]) & (pa_ <= pb)))
    )


def packet_keys(batch: pa.RecordBatch | pa.Table) -> PacketKeys:
    # IP packets, except non-first fragments: without reassembly their ports are
    # unknown, so they cannot be attributed to a flow (nfstream drops them too)
    is_ip = np.asarray(batch.column("ip_version").is_valid().to_numpy(zero_copy_only=False))
    later_fragment = np.asarray(pc.fill_null(batch.column("ip_frag_offset"), 0).to_numpy(zero_copy_only=False)) > 0
    rows = np.flatnonzero(is_ip & ~later_fragment)
    col = batch.column
    num = {attr: _num(col(name), rows) for attr, name in NUMERIC.items()}
    src, dst = _ip(col("src_ip"), rows), _ip(col("dst_ip"), rows)
    tsrc, tdst = _ip(col("tunnel_src_ip"), rows), _ip(col("tunnel_dst_ip"), rows)
    sport, dport = num["src_port"], num["dst_port"]
    fwd = _less(src, dst, sport, dport)
    lo = np.where(fwd[:, None], src, dst)
    hi = np.where(fwd[:, None], dst, src)
    lo_port = np.where(fwd, sport, dport)
    hi_port = np.where(fwd, dport, sport)
    zero = np.zeros(len(rows), dtype=np.int64)
    tfwd = _less(tsrc, tdst, zero, zero)
    tlo = np.where(tfwd[:, None], tsrc, tdst)
    thi = np.where(tfwd[:, None], tdst, tsrc)
    ports_proto = lo_port << 16 | hi_port | num["ip_proto"] << 32 | num["vlan_id"] << 40 | num["tunnel_type"] << 56
    h = np.full(len(rows), 0x243F6A8885A308D3, dtype=np.uint64)
    for x in (lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1], ports_proto, tlo[:, 0], tlo[:, 1], thi[:, 0], thi[:, 1]):
        h = _mix(h, x)
    h = (h ^ (h >> np.uint64(29))) * _M2
    h ^= h >> np.uint64(32)
    server = pc.coalesce(col("tls_sni"), col("http_host"), col("dns_qname"))
    if isinstance(server, pa.ChunkedArray):
        server = server.combine_chunks()
    ts_ns = np.asarray(col("ts").cast(pa.int64()).to_numpy(zero_copy_only=False))[rows]
    return PacketKeys(
        rows=rows,
        hash=h,
        fwd=fwd,
        ts_ns=ts_ns,
        src=src,
        dst=dst,
        tunnel_src=tsrc,
        tunnel_dst=tdst,
        vlan_valid=_valid(col("vlan_id"), rows),
        teid_valid=_valid(col("teid"), rows) & (num["tunnel_type"] == TUNNEL_GTPU),
        qfi_valid=_valid(col("gtpu_qfi"), rows),
        server_name=server.take(pa.array(rows)),
        **num,
    )
