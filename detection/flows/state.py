"""Flow table storage: one slot per live flow, every field a numpy array.

Accumulators are mergeable (counts, sums, sums of squares, minima, maxima):
a flow grows by merging partial flows (:mod:`detection.flows.partial`), so one
updated by many batches ends with the same values as one update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from detection.flows.community import CID_CHARS
from detection.flows.partial import DIR_FLAGS, FROM_FIRST_PACKET, PartialFlows
from detection.flows.schema import SPLT_PACKETS, TCP_FLAGS
from sensors.masks import present

# name -> (trailing shape, dtype, initial value)
FIELDS: dict[str, tuple[tuple[int, ...], Any, Any]] = {
    "hash": ((), np.uint64, 0),
    "fwd": ((), np.bool_, False),
    "src": ((2,), np.uint64, 0),
    "dst": ((2,), np.uint64, 0),
    "sport": ((), np.int64, 0),
    "dport": ((), np.int64, 0),
    "proto": ((), np.int64, 0),
    "ipver": ((), np.int64, 0),
    "icmp_type": ((), np.int64, 0),
    "icmp_code": ((), np.int64, 0),
    "vlan": ((), np.int64, 0),
    "vlan_valid": ((), np.bool_, False),
    "ttype": ((), np.int64, 0),
    "tsrc": ((2,), np.uint64, 0),
    "tdst": ((2,), np.uint64, 0),
    "teid": ((2,), np.int64, 0),  # per direction
    "teid_valid": ((2,), np.bool_, False),
    "qfi": ((), np.int64, 0),
    "qfi_valid": ((), np.bool_, False),
    "first_ns": ((), np.int64, 0),
    "last_ns": ((), np.int64, 0),
    "first_ms": ((), np.int64, 0),
    "last_ms": ((), np.int64, 0),
    "last_dir_ns": ((2,), np.int64, -1),
    "pkts": ((2,), np.int64, 0),
    "bytes": ((2,), np.int64, 0),
    "payload": ((2,), np.int64, 0),
    "ps_min": ((2,), np.float64, np.inf),
    "ps_max": ((2,), np.float64, -np.inf),
    "ps_sum": ((2,), np.float64, 0.0),
    "ps_sq": ((2,), np.float64, 0.0),
    "iat_min": ((3,), np.float64, np.inf),  # [src2dst, dst2src, bidirectional], ns
    "iat_max": ((3,), np.float64, -np.inf),
    "iat_sum": ((3,), np.float64, 0.0),
    "iat_m2": ((3,), np.float64, 0.0),  # sum of squared deviations (Chan et al. merge)
    "iat_n": ((3,), np.int64, 0),
    "flags": ((len(TCP_FLAGS),), np.int64, 0),
    "dir_flags": ((2, len(DIR_FLAGS)), np.int64, 0),
    "splt_bytes": ((SPLT_PACKETS,), np.int32, 0),
    "splt_dir": ((SPLT_PACKETS,), np.int8, 0),
    "app": ((), np.int64, 0),
    "server": ((), object, None),
    "errors": ((), np.int64, 0),
    "cid": ((CID_CHARS,), np.uint8, 0),  # Community ID, its characters ...
    "cid_valid": ((), np.bool_, False),  # ... when the partial flow brought it (else made when handed out)
}
_RST = TCP_FLAGS.index("rst")


class FlowState:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self.arrays = {name: np.full((capacity, *shape), init, dtype=dt) for name, (shape, dt, init) in FIELDS.items()}
        self._free: list[np.ndarray] = []
        self._next = 0

    def __getstate__(self) -> dict[str, object]:
        """Slots never handed out are left out (a checkpoint pickles this every second or so)."""
        return {"capacity": self._next, "arrays": {k: v[: self._next] for k, v in self.arrays.items()},
                "_free": self._free, "_next": self._next}

    def __getitem__(self, name: str) -> np.ndarray:
        if name == "rst":
            return self.arrays["flags"][:, _RST]
        if name == "fin_s2d":
            return self.arrays["dir_flags"][:, 0, 1]
        if name == "fin_d2s":
            return self.arrays["dir_flags"][:, 1, 1]
        return self.arrays[name]

    def allocate(self, count: int) -> np.ndarray:
        out: list[np.ndarray] = []
        while count and self._free:
            chunk = self._free.pop()
            take, rest = chunk[:count], chunk[count:]
            if len(rest):
                self._free.append(rest)
            out.append(take)
            count -= len(take)
        if count:
            if self._next + count > self.capacity:
                self._grow(self._next + count)
            out.append(np.arange(self._next, self._next + count, dtype=np.int64))
            self._next += count
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def release(self, slots: np.ndarray) -> None:
        if len(slots):
            self._free.append(slots.copy())

    def _grow(self, need: int) -> None:
        new_cap = max(need, 2 * self.capacity)
        for name, (shape, dt, init) in FIELDS.items():
            old = self.arrays[name]
            arr = np.full((new_cap, *shape), init, dtype=dt)
            arr[: self.capacity] = old
            self.arrays[name] = arr
        self.capacity = new_cap

    def init_slots(self, slots: np.ndarray, partials: PartialFlows, rows: np.ndarray) -> None:
        """Reset ``slots`` for new flows that begin with the partial flows ``rows``."""
        a = self.arrays
        for name, (_shape, _dt, init) in FIELDS.items():
            a[name][slots] = init
        for name in ("hash", "fwd", "first_ns", *FROM_FIRST_PACKET):
            a[name][slots] = partials[name][rows]
        if partials.cid is not None:
            a["cid"][slots] = partials.cid[rows]
            a["cid_valid"][slots] = True
        a["first_ms"][slots] = a["first_ns"][slots] // 1_000_000

    def merge(self, slots: np.ndarray, p: PartialFlows, cont: np.ndarray) -> None:
        """Add partial flows (one per slot, in time order after what the slots hold) to ``slots``; ``cont``:
        the row continues the flow stored there (else the slot was just initialised from it)."""
        a = self.arrays
        # the partials' orientation 0 is the fwd packets'; the flow's direction 0 is its first packet's
        swap = ~np.where(cont, a["fwd"][slots], p["fwd"])

        def rel(x: np.ndarray) -> np.ndarray:
            return np.where(swap.reshape(-1, *[1] * (x.ndim - 1)), x[:, ::-1], x)

        prior = a["pkts"][slots].sum(axis=1)  # packets before these (0 for new flows)
        byte_counts = rel(p["bytes"])
        a["pkts"][slots] += rel(p["pkts"])
        a["bytes"][slots] += byte_counts
        a["payload"][slots] += rel(p["payload"])
        a["ps_sum"][slots] += byte_counts
        a["ps_sq"][slots] += rel(p["ps_sq"])
        a["ps_min"][slots] = np.minimum(a["ps_min"][slots], rel(p["ps_min"]))
        a["ps_max"][slots] = np.maximum(a["ps_max"][slots], rel(p["ps_max"]))
        a["dir_flags"][slots] += rel(p["dir_flags"])
        # inter-arrival times: first the gaps from the stored flow's last packets (each way, and both ways)
        dir_first, stored_last = rel(p["dir_first_ns"]), a["last_dir_ns"][slots]
        for d in (0, 1):
            gap = cont & (stored_last[:, d] >= 0) & (dir_first[:, d] >= 0)
            self._gap(slots[gap], d, dir_first[gap, d] - stored_last[gap, d])
        self._gap(slots[cont], 2, p["first_ns"][cont] - a["last_ns"][slots[cont]])
        stats = [p[name] for name in ("iat_n", "iat_sum", "iat_m2", "iat_min", "iat_max")]
        for d in (0, 1):
            col = np.where(swap, 1 - d, d)
            self._iat(slots, d, *(x[np.arange(len(slots)), col] for x in stats))
        self._iat(slots, 2, *(x[:, 2] for x in stats))
        a["last_dir_ns"][slots] = np.maximum(stored_last, rel(p["dir_last_ns"]))
        a["last_ns"][slots] = p["last_ns"]
        a["last_ms"][slots] = p["last_ns"] // 1_000_000
        a["flags"][slots] += p["flags"]
        a["errors"][slots] += p["errors"]
        # the first packets' payload sizes and directions
        width = a["splt_bytes"].shape[1]
        column = np.arange(width)
        r, j = np.nonzero((column < p["pkts"].sum(axis=1)[:, None]) & (prior[:, None] + column < width))
        a["splt_bytes"][slots[r], prior[r] + j] = p["splt_bytes"][r, j]
        a["splt_dir"][slots[r], prior[r] + j] = p["splt_dir"][r, j] ^ swap[r]
        # the first value of the sparse attributes, for flows that have none yet
        unset = p["qfi_valid"] & ~a["qfi_valid"][slots]
        a["qfi"][slots[unset]] = p["qfi"][unset]
        a["qfi_valid"][slots[unset]] = True
        unset = (p["app"] != 0) & (a["app"][slots] == 0)
        a["app"][slots[unset]] = p["app"][unset]
        teid, teid_valid = rel(p["teid"]), rel(p["teid_valid"])
        for d in (0, 1):
            unset = teid_valid[:, d] & ~a["teid_valid"][slots, d]
            a["teid"][slots[unset], d] = teid[unset, d]
            a["teid_valid"][slots[unset], d] = True
        names = p.server_name
        if names.null_count < len(names):
            rows = np.flatnonzero(present(names))
            unset = np.array([v is None for v in a["server"][slots[rows]]], dtype=bool)
            if unset.any():
                a["server"][slots[rows[unset]]] = np.array(names.take(pa.array(rows[unset])).to_pylist(), dtype=object)

    def _gap(self, slots: np.ndarray, col: int, gaps: np.ndarray) -> None:
        """Merge one inter-arrival time per slot."""
        g = gaps.astype(np.float64)
        self._iat(slots, col, np.ones(len(g), np.int64), g, np.zeros(len(g)), g, g)

    def _iat(self, slots: np.ndarray, col: int, n_b: np.ndarray, sum_b: np.ndarray, m2_b: np.ndarray,
             min_b: np.ndarray, max_b: np.ndarray) -> None:
        """Merge a batch's inter-arrival statistics into ``slots`` (Chan et al.'s parallel variance)."""
        a = self.arrays
        na = a["iat_n"][slots, col].astype(np.float64)
        mean_a = a["iat_sum"][slots, col] / np.maximum(na, 1)
        mean_b = sum_b / np.maximum(n_b, 1)
        delta = mean_b - mean_a
        a["iat_m2"][slots, col] += m2_b + delta * delta * na * n_b / np.maximum(na + n_b, 1)
        a["iat_n"][slots, col] += n_b.astype(np.int64)
        a["iat_sum"][slots, col] += sum_b
        a["iat_min"][slots, col] = np.minimum(a["iat_min"][slots, col], min_b)
        a["iat_max"][slots, col] = np.maximum(a["iat_max"][slots, col], max_b)
