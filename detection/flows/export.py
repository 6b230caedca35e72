"""Flow slots -> Arrow rows of ``FLOW_SCHEMA`` (addresses as text, Community ID, statistics)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.flows.community import PORT_PROTOS, community_id_chars, community_id_text
from detection.flows.partial import DIR_FLAGS
from detection.flows.schema import FLOW_SCHEMA, TCP_FLAGS
from detection.flows.state import FlowState
from sensors.protocols.packets import ip_strings, masked_array

TUNNEL_NAMES = {1: "gtpu", 2: "gre", 3: "vxlan", 4: "geneve", 5: "ipip", 6: "erspan"}
APP_NAMES = {1: "dns", 2: "tls", 3: "http", 4: "http2", 5: "ssh", 6: "modbus", 7: "pfcp", 8: "gtpc", 9: "gtpu",
             10: "diameter", 11: "ngap", 12: "s1ap", 13: "arp", 14: "smb", 15: "mail", 16: "ftp",
             17: "dnp3", 18: "s7comm"}
REASONS = {1: "idle", 2: "active", 3: "tcp_reuse", 4: "end_of_input", 5: "evicted"}


def _names(names: dict[int, str], codes: np.ndarray) -> pa.Array:
    """Text of small integer codes (null for a code without a name), with one take."""
    table = pa.array([names.get(c) for c in range(max(names) + 2)], pa.string())  # the last one: any other code
    return table.take(pa.array(np.minimum(codes.astype(np.int64), len(table) - 1)))


def _stats(s: np.ndarray, sq: np.ndarray, n: np.ndarray, mn: np.ndarray, mx: np.ndarray, scale: float,
           m2: np.ndarray | None = None) -> list[np.ndarray]:
    nz = np.maximum(n, 1)
    mean = s / nz
    dev2 = (sq - s * s / nz) if m2 is None else m2
    var = np.where(n > 1, dev2 / np.maximum(n - 1, 1), 0.0)
    std = np.sqrt(np.maximum(var, 0.0))
    return [np.where(n > 0, mn, 0.0) * scale, mean * scale, std * scale, np.where(n > 0, mx, 0.0) * scale]


def _community_ids(a: dict[str, np.ndarray]) -> np.ndarray:
    """The flows' Community ID characters: those their partial flows brought, the others made here."""
    cid = a["cid"]
    missing = np.flatnonzero(~a["cid_valid"])
    if len(missing):
        m = {name: a[name][missing] for name in ("src", "dst", "ipver", "proto", "sport", "dport", "icmp_type",
                                                  "icmp_code")}
        cid[missing] = community_id_chars(m["src"], m["dst"], m["ipver"] == 4, m["proto"], m["sport"], m["dport"],
                                          m["icmp_type"], m["icmp_code"])
    return cid


def flow_ids(key_hash: np.ndarray, first_ns: np.ndarray) -> np.ndarray:
    """``flow_id``: the flow key's hash mixed with the flow's start, below 2**53 (exact in JSON numbers)."""
    fid = key_hash ^ (first_ns.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    fid ^= fid >> np.uint64(29)
    return (fid & np.uint64((1 << 53) - 1)).astype(np.int64)


class _Rows(dict[str, np.ndarray]):
    """The flow state's arrays at some slots, each gathered when first read: a gather is ~one cache miss per
    slot and field, and some fields are never exported (or only for a few flows)."""

    def __init__(self, arrays: dict[str, np.ndarray], slots: np.ndarray) -> None:
        super().__init__()
        self._arrays, self._slots = arrays, slots

    def __missing__(self, name: str) -> np.ndarray:
        values = self[name] = self._arrays[name][self._slots]
        return values


def build_flow_batch(st: FlowState, slots: np.ndarray, reasons: np.ndarray) -> pa.RecordBatch:
    a = _Rows(st.arrays, slots)
    n = len(slots)
    proto = a["proto"]
    has_ports = np.isin(proto, PORT_PROTOS)
    fid = flow_ids(a["hash"], a["first_ns"])
    tunnelled = a["ttype"] != 0
    gtp = a["ttype"] == 1
    pk, by = a["pkts"], a["bytes"]
    cols: dict[str, pa.Array] = {
        "flow_id": pa.array(fid),
        "community_id": community_id_text(_community_ids(a)),
        "first_seen": pa.array(a["first_ns"]).cast(pa.timestamp("ns", tz="UTC")),
        "last_seen": pa.array(a["last_ns"]).cast(pa.timestamp("ns", tz="UTC")),
        "src_ip": ip_strings(a["src"]),
        "dst_ip": ip_strings(a["dst"]),
        "src_port": pa.array(np.where(has_ports, a["sport"], 0).astype(np.uint16)),
        "dst_port": pa.array(np.where(has_ports, a["dport"], 0).astype(np.uint16)),
        "ip_proto": pa.array(proto.astype(np.uint8)),
        "ip_version": pa.array(a["ipver"].astype(np.uint8)),
        "vlan_id": masked_array(a["vlan"], a["vlan_valid"], pa.uint16()),
        "tunnel_type": _names(TUNNEL_NAMES, a["ttype"]),
        "teid": masked_array(a["teid"][:, 0], gtp & a["teid_valid"][:, 0], pa.uint32()),
        "dst2src_teid": masked_array(a["teid"][:, 1], gtp & a["teid_valid"][:, 1], pa.uint32()),
        "gtpu_qfi": masked_array(a["qfi"], a["qfi_valid"], pa.uint8()),
        "tunnel_src_ip": pc.if_else(pa.array(tunnelled), ip_strings(a["tsrc"]), pa.scalar(None, pa.string())),
        "tunnel_dst_ip": pc.if_else(pa.array(tunnelled), ip_strings(a["tdst"]), pa.scalar(None, pa.string())),
        "bidirectional_packets": pa.array(pk.sum(axis=1).astype(np.uint64)),
        "bidirectional_bytes": pa.array(by.sum(axis=1).astype(np.uint64)),
        "src2dst_packets": pa.array(pk[:, 0].astype(np.uint64)),
        "dst2src_packets": pa.array(pk[:, 1].astype(np.uint64)),
        "src2dst_bytes": pa.array(by[:, 0].astype(np.uint64)),
        "dst2src_bytes": pa.array(by[:, 1].astype(np.uint64)),
        "bidirectional_duration_ms": pa.array((a["last_ns"] - a["first_ns"]) / 1e6),
        "src2dst_payload_bytes": pa.array(a["payload"][:, 0].astype(np.uint64)),
        "dst2src_payload_bytes": pa.array(a["payload"][:, 1].astype(np.uint64)),
    }
    ps = {
        "bidirectional": (a["ps_sum"].sum(1), a["ps_sq"].sum(1), pk.sum(1), a["ps_min"].min(1), a["ps_max"].max(1)),
        "src2dst": (a["ps_sum"][:, 0], a["ps_sq"][:, 0], pk[:, 0], a["ps_min"][:, 0], a["ps_max"][:, 0]),
        "dst2src": (a["ps_sum"][:, 1], a["ps_sq"][:, 1], pk[:, 1], a["ps_min"][:, 1], a["ps_max"][:, 1]),
    }
    for prefix, (s, sq, cnt, mn, mx) in ps.items():
        for stat, v in zip(("min", "mean", "stddev", "max"), _stats(s, sq, cnt, mn, mx, 1.0)):
            cols[f"{prefix}_{stat}_ps"] = pa.array(v)
    for prefix, j in (("bidirectional", 2), ("src2dst", 0), ("dst2src", 1)):
        v4 = _stats(a["iat_sum"][:, j], a["iat_m2"][:, j], a["iat_n"][:, j], a["iat_min"][:, j],
                    a["iat_max"][:, j], 1e-6, m2=a["iat_m2"][:, j])
        for stat, v in zip(("min", "mean", "stddev", "max"), v4):
            cols[f"{prefix}_{stat}_piat_ms"] = pa.array(v)
    for j, f in enumerate(TCP_FLAGS):
        cols[f"bidirectional_{f}_packets"] = pa.array(a["flags"][:, j].astype(np.uint64))
    for j, f in enumerate(DIR_FLAGS):
        cols[f"src2dst_{f}_packets"] = pa.array(a["dir_flags"][:, 0, j].astype(np.uint64))
        cols[f"dst2src_{f}_packets"] = pa.array(a["dir_flags"][:, 1, j].astype(np.uint64))
    width = a["splt_bytes"].shape[1]
    lengths = np.minimum(pk.sum(axis=1), width)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    keep = np.arange(width)[None, :] < lengths[:, None]
    cols["splt_payload_bytes"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(a["splt_bytes"][keep]))
    cols["splt_direction"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(a["splt_dir"][keep]))
    cols["application_hint"] = _names(APP_NAMES, a["app"])
    cols["server_name"] = pa.array(a["server"].tolist(), type=pa.string())
    cols["decode_error_packets"] = pa.array(a["errors"].astype(np.uint64))
    cols["expiration_reason"] = _names(REASONS, reasons)
    cols["session_id"] = pa.nulls(n, pa.string())  # filled by the session table, which sees the control plane
    cols["plane"] = pa.nulls(n, pa.string())  # filled once session_id is (detection.flows.planes)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)
