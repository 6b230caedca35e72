"""A SYN flood from random sources, written straight to a pcap with numpy (millions of packets in seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sensors.capture.pcap import global_header


def syn_flood(path: Path, packets: int, seconds: float, seed: int = 7) -> None:
    """``packets`` SYNs to 10.0.0.5:80 from random 100.64.0.0/10 sources, evenly over ``seconds``."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frame = np.frombuffer(bytes(Ether() / IP(src="100.64.0.1", dst="10.0.0.5") / TCP(sport=40000, dport=80,
                                                                                      flags="S")), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    n, length = packets, len(frame)
    record = np.zeros((n, 16 + length), dtype=np.uint8)
    ts_us = (np.arange(n, dtype=np.int64) * int(seconds * 1e6)) // max(n, 1) + 1_700_000_000_000_000
    header = np.zeros(n, dtype=[("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("len", "<u4")])
    header["sec"], header["usec"] = ts_us // 1_000_000, ts_us % 1_000_000
    header["caplen"] = header["len"] = length
    record[:, :16] = header.view(np.uint8).reshape(n, 16)
    record[:, 16:] = frame
    src = (np.uint32(100 << 24 | 64 << 16) + rng.integers(0, 1 << 22, n, dtype=np.uint32)).astype(">u4")
    record[:, 16 + 26:16 + 30] = src.view(np.uint8).reshape(n, 4)
    sport = rng.integers(1024, 65535, n, dtype=np.uint16).astype(">u2")
    record[:, 16 + 34:16 + 36] = sport.view(np.uint8).reshape(n, 2)
    with open(path, "wb") as f:
        f.write(global_header(snaplen=65535))
        f.write(record.tobytes())


__all__ = ["syn_flood"]
