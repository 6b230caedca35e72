"""Deterministic mixed captures: GTP-U (N3) user plane, PFCP (N4), DNS, TLS,
HTTP, SSH, Modbus, RTP, ICMP and a port scan, written as a pcap.

Flow instances are copies of :mod:`sensors.generate.templates` with their
addresses, ports, TEIDs, SEIDs and names patched in with numpy, so a million
packets take seconds; memory is bounded by writing in blocks.  The same seed
gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensors.capture.pcap import global_header
from sensors.generate.templates import NAME_DIGITS, FlowTemplate, all_templates

#: share of packets per flow class, per profile; GTP-U classes make up 20% in both.
#: "standard" resembles the capture the peers were measured on (shared/docs: 1M packets,
#: ~13k flows, ~820 MiB); "short-flows" has ~4x more, shorter flows (DNS, scans).
PROFILES = {
    "standard": {
        "http": 0.30, "tls": 0.31, "http_small": 0.01, "dns": 0.004, "icmp": 0.005, "ssh": 0.04, "modbus": 0.03,
        "rtp": 0.08, "pfcp": 0.018, "scan": 0.003,
        "gtp_http": 0.08, "gtp_tls": 0.107, "gtp_dns": 0.003, "gtp_icmp": 0.005, "gtp_http_small": 0.005,
    },
    "short-flows": {
        "http": 0.27, "tls": 0.25, "http_small": 0.03, "dns": 0.03, "icmp": 0.01, "ssh": 0.04, "modbus": 0.03,
        "rtp": 0.08, "pfcp": 0.03, "scan": 0.03,
        "gtp_http": 0.08, "gtp_tls": 0.09, "gtp_dns": 0.015, "gtp_icmp": 0.005, "gtp_http_small": 0.01,
    },
}
BLOCK_PACKETS = 100_000
BASE_TS = 1_700_000_000.0
UPF_N3 = (172 << 24) | (16 << 16) | (255 << 8) | 1


@dataclass
class GeneratedCapture:
    path: Path
    packets: int
    flows_planned: int
    gtp_packets: int


def _ip(a: int, b: np.ndarray | int, c: np.ndarray | int, d: np.ndarray | int) -> np.ndarray:
    return (np.uint32(a) << 24) | (np.asarray(b, np.uint32) << 16) | (np.asarray(c, np.uint32) << 8) | np.asarray(d, np.uint32)


def generate(path: Path, packets: int = 1_000_000, seed: int = 1, duration_s: float = 300.0,
             profile: str = "standard") -> GeneratedCapture:
    """Write a mixed capture of exactly ``packets`` packets to ``path``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    share = PROFILES[profile]
    rng = np.random.default_rng(seed)
    templates = all_templates()
    names = list(share)
    raws: list[bytes] = []
    plans = []  # per class: (template, instance ids, first template packet index)
    next_instance = 0
    for name in names:
        t = templates[name]
        count = max(1, int(round(share[name] * packets * 1.02 / len(t.packets))))
        inst = np.arange(next_instance, next_instance + count, dtype=np.int64)
        next_instance += count
        plans.append((t, inst, len(raws)))
        raws.extend(p.raw for p in t.packets)
    # timestamps: flows start uniformly, packets follow with jittered template gaps
    ts_parts, tid_parts, inst_parts = [], [], []
    for t, inst, base in plans:
        gaps = np.array([p.gap_ms for p in t.packets]) / 1000.0
        start = BASE_TS + rng.uniform(0, duration_s, len(inst))
        jitter = rng.uniform(0.5, 1.5, (len(inst), len(gaps)))
        times = start[:, None] + np.cumsum(gaps[None, :] * jitter, axis=1)
        ts_parts.append(times.ravel())
        tid_parts.append(np.tile(np.arange(base, base + len(gaps)), len(inst)))
        inst_parts.append(np.repeat(inst, len(gaps)))
    ts = np.concatenate(ts_parts)
    tid = np.concatenate(tid_parts)
    inst = np.concatenate(inst_parts)
    order = np.argsort(ts, kind="stable")[:packets]
    ts, tid, inst = ts[order], tid[order], inst[order]
    info = _field_table(plans)
    lengths = np.array([len(r) for r in raws], dtype=np.int64)
    gtp_packets = int(info["gtp"][tid].sum())
    with open(path, "wb") as f:
        f.write(global_header())
        for lo in range(0, len(ts), BLOCK_PACKETS):
            hi = min(lo + BLOCK_PACKETS, len(ts))
            f.write(_block(raws, lengths, info, ts[lo:hi], tid[lo:hi], inst[lo:hi]))
    return GeneratedCapture(path, len(ts), next_instance, gtp_packets)


def _field_table(plans: list[tuple[FlowTemplate, np.ndarray, int]]) -> dict[str, np.ndarray]:
    """Per template packet: where each patched field is (-1: absent) and how the flow is shaped."""
    cols: dict[str, list[int]] = {k: [] for k in ("c2s", "ip", "l4", "outer_ip", "gtp", "name", "seid", "kind")}
    kinds = {"scan": 1, "pfcp": 2}
    for t, _inst, _base in plans:
        for p in t.packets:
            for k in ("c2s", "ip", "l4", "outer_ip", "gtp", "name", "seid"):
                cols[k].append(int(getattr(p, k)))
            cols["kind"].append(kinds.get(t.name, 0))
    out: dict[str, np.ndarray] = {k: np.array(v, dtype=np.int64) for k, v in cols.items()}
    out["gtp_off"] = out.pop("gtp")
    out["gtp"] = out["gtp_off"] >= 0
    return out


def _block(raws: list[bytes], lengths: np.ndarray, info: dict[str, np.ndarray], ts: np.ndarray,
           tid: np.ndarray, inst: np.ndarray) -> bytes:
    n = len(ts)
    rec_len = 16 + lengths[tid]
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(rec_len[:-1], out=starts[1:])
    buf = bytearray(int(rec_len.sum()))
    for s, t in zip(starts.tolist(), tid.tolist()):  # one memcpy per packet
        buf[s + 16 : s + 16 + len(raws[t])] = raws[t]
    out = np.frombuffer(buf, dtype=np.uint8)
    data = starts + 16
    sec = np.floor(ts).astype(np.int64)
    usec = np.round((ts - sec) * 1e6).astype(np.int64)
    sec, usec = sec + usec // 1_000_000, usec % 1_000_000
    _put(out, starts, sec, 4, "<")
    _put(out, starts + 4, usec, 4, "<")
    _put(out, starts + 8, lengths[tid], 4, "<")
    _put(out, starts + 12, lengths[tid], 4, "<")
    c2s = info["c2s"][tid].astype(bool)
    kind = info["kind"][tid]
    scan, pfcp = kind == 1, kind == 2
    # endpoints of the flow instance
    client = _ip(10, 1 + (inst >> 16) % 200, (inst >> 8) & 0xFF, inst & 0xFF)
    server = _ip(198, 18 + (inst >> 8) % 2, 0, 0) + (inst % 509).astype(np.uint32) + 1
    client = np.where(scan, _ip(10, 66, 6, 6), client)
    server = np.where(scan, _ip(10, 0, 0, 10), server)
    cport = np.where(scan, 61001, 1024 + inst % 60000)
    sport_scan = 1 + inst % 65535
    ip, l4 = data + info["ip"][tid], data + info["l4"][tid]
    m = ~pfcp
    _put(out, (ip + np.where(c2s, 12, 16))[m], client[m], 4)
    _put(out, (ip + np.where(c2s, 16, 12))[m], server[m], 4)
    has_l4 = m & (info["l4"][tid] >= 0)
    _put(out, (l4 + np.where(c2s, 0, 2))[has_l4], cport[has_l4], 2)
    sc = scan & (info["l4"][tid] >= 0)
    _put(out, (l4 + np.where(c2s, 2, 0))[sc], sport_scan[sc], 2)
    g = info["gtp"][tid]
    gnb = _ip(172, 16, 0, 1 + inst % 50)
    oip = data + info["outer_ip"][tid]
    _put(out, (oip + np.where(c2s, 12, 16))[g], gnb[g], 4)
    _put(out, (oip + np.where(c2s, 16, 12))[g], np.full(n, UPF_N3)[g], 4)
    teid = np.where(c2s, 0x01000000 + inst, 0x02000000 + inst)  # uplink: UPF's TEID, downlink: gNB's
    _put(out, (data + info["gtp_off"][tid] + 4)[g], teid[g], 4)
    s = info["seid"][tid] >= 0
    _put(out, (data + info["seid"][tid])[s], 0x1000 + inst[s], 8)
    nm = info["name"][tid] >= 0
    digits = np.char.zfill((inst[nm] % 10_000_000).astype(str), len(NAME_DIGITS))
    digit_bytes = np.frombuffer("".join(digits.tolist()).encode(), dtype=np.uint8).reshape(-1, len(NAME_DIGITS))
    pos = (data + info["name"][tid])[nm]
    for k in range(len(NAME_DIGITS)):
        out[pos + k] = digit_bytes[:, k]
    return bytes(buf)


def _put(out: np.ndarray, pos: np.ndarray, value: np.ndarray, width: int, order: str = ">") -> None:
    """Write ``width``-byte integers at byte positions ``pos`` (big-endian unless order '<')."""
    value = np.asarray(value).astype(np.uint64)
    for k in range(width):
        shift = (width - 1 - k) * 8 if order == ">" else k * 8
        out[pos + k] = ((value >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)
