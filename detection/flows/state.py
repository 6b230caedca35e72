"""Flow table storage: one slot per live flow, every field a numpy array.

Accumulators are mergeable (counts, sums, sums of squares, minima, maxima), so
a flow updated by many batches ends with the same values as one update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from detection.flows.schema import SPLT_PACKETS, TCP_FLAG_BIT, TCP_FLAGS
from sensors.masks import present

if TYPE_CHECKING:
    from detection.flows.keys import PacketKeys

DIR_FLAGS = ("syn", "fin", "rst")  # also counted per direction
FLAG_BIT_INDEX = np.array([TCP_FLAG_BIT[f] for f in TCP_FLAGS], dtype=np.intp)
DIR_BIT_INDEX = np.array([TCP_FLAG_BIT[f] for f in DIR_FLAGS], dtype=np.intp)

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
}
_RST = TCP_FLAGS.index("rst")
#: flow fields taken from the flow's first packet: state field -> PacketKeys attribute
FROM_FIRST_PACKET = {
    "src": "src", "dst": "dst", "sport": "src_port", "dport": "dst_port", "proto": "ip_proto",
    "ipver": "ip_version", "icmp_type": "icmp_type", "icmp_code": "icmp_code", "vlan": "vlan_id",
    "vlan_valid": "vlan_valid", "ttype": "tunnel_type", "tsrc": "tunnel_src", "tdst": "tunnel_dst",
}


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

    def init_slots(self, slots: np.ndarray, k: PacketKeys, rows: np.ndarray, hashes: np.ndarray,
                   t_first: np.ndarray, fwd: np.ndarray) -> None:
        """Reset ``slots`` for new flows whose first packets are ``k`` rows ``rows``."""
        a = self.arrays
        for name, (_shape, _dt, init) in FIELDS.items():
            a[name][slots] = init
        a["hash"][slots] = hashes
        a["fwd"][slots] = fwd
        for name, attr in FROM_FIRST_PACKET.items():
            a[name][slots] = getattr(k, attr)[rows]
        a["first_ns"][slots] = t_first
        a["first_ms"][slots] = t_first // 1_000_000

    def accumulate(self, seg_slot: np.ndarray, sid: np.ndarray, spos: np.ndarray, cont: np.ndarray,
                   order: np.ndarray, k: PacketKeys, t: np.ndarray, pdir: np.ndarray, flags: np.ndarray) -> None:
        """Add the packets (sorted by flow segment, then time) to their segments' slots.

        Segments are contiguous runs, and so are (segment, direction) pairs once
        sorted by ``sid * 2 + pdir``: every statistic is one ``reduceat`` over runs.
        """
        a = self.arrays
        nseg, n = len(spos), len(sid)
        slot = seg_slot
        prior = a["pkts"][slot].sum(axis=1)  # packets before this batch (0 for new flows)
        frame = k.frame_len[order].astype(np.float64)
        payload = k.payload_len[order]
        # -- per direction: runs of equal (segment, direction)
        key2 = sid * 2 + pdir
        o2 = np.argsort(key2, kind="stable")
        k2, t2, fr2 = key2[o2], t[o2], frame[o2]
        runs = _run_starts(k2)
        rs, rd = k2[runs] // 2, k2[runs] % 2

        def per_dir(values: np.ndarray, fill: float | int, dtype: type = np.float64) -> np.ndarray:
            out = np.full((nseg, 2, *values.shape[1:]), fill, dtype=dtype)
            out[rs, rd] = values
            return out

        sums = np.add.reduceat(np.stack([np.ones(n), fr2, payload[o2].astype(np.float64), fr2 * fr2], axis=1), runs)
        a["pkts"][slot] += per_dir(sums[:, 0], 0, np.int64)
        a["bytes"][slot] += per_dir(sums[:, 1], 0, np.int64)
        a["payload"][slot] += per_dir(sums[:, 2], 0, np.int64)
        a["ps_sum"][slot] += per_dir(sums[:, 1], 0.0)
        a["ps_sq"][slot] += per_dir(sums[:, 3], 0.0)
        a["ps_min"][slot] = np.minimum(a["ps_min"][slot], per_dir(np.minimum.reduceat(fr2, runs), np.inf))
        a["ps_max"][slot] = np.maximum(a["ps_max"][slot], per_dir(np.maximum.reduceat(fr2, runs), -np.inf))
        dir_bits = _bits(flags[o2], DIR_BIT_INDEX)
        a["dir_flags"][slot] += per_dir(np.add.reduceat(dir_bits, runs, dtype=np.int64), 0, np.int64)
        # inter-arrival times per direction: the first packet of a run follows the stored flow's last one
        prev2 = np.empty(n, dtype=np.int64)
        prev2[1:] = t2[:-1]
        prev2[runs] = np.where(cont[rs], a["last_dir_ns"][slot[rs], rd], -1)
        iat = _run_iat(t2, prev2, runs)
        for d in (0, 1):
            m = rd == d
            self._iat(slot[rs[m]], d, *(x[m] for x in iat))
        last_dir = per_dir(t2[np.append(runs[1:], n) - 1], -1, np.int64)
        a["last_dir_ns"][slot] = np.maximum(a["last_dir_ns"][slot], last_dir)
        # -- per segment (bidirectional)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = t[:-1]
        prev[spos] = np.where(cont, a["last_ns"][slot], -1)
        self._iat(slot, 2, *_run_iat(t, prev, spos))
        seg_end = np.append(spos[1:], n) - 1
        a["last_ns"][slot] = t[seg_end]
        a["last_ms"][slot] = t[seg_end] // 1_000_000
        a["flags"][slot] += np.add.reduceat(_bits(flags, FLAG_BIT_INDEX), spos, dtype=np.int64)
        a["errors"][slot] += np.add.reduceat((k.decode_status[order] != 0).astype(np.int64), spos)
        # the first packets: payload sizes and directions
        rank = prior[sid] + (np.arange(n) - spos[sid])
        early = rank < a["splt_bytes"].shape[1]
        a["splt_bytes"][slot[sid[early]], rank[early]] = payload[early]
        a["splt_dir"][slot[sid[early]], rank[early]] = pdir[early]
        # the first value per flow of the sparse attributes
        self._first_value("qfi", slot, sid, k.qfi[order], k.qfi_valid[order])
        app = k.app_proto[order]
        self._first_value("app", slot, sid, app, app != 0)
        tv = k.teid_valid[order][o2]
        if tv.any():
            teid2 = k.teid[order][o2]
            for d in (0, 1):
                m = tv & (k2 % 2 == d)
                self._first_value("teid", slot, k2 // 2, teid2, m, column=d)
        if k.server_name.null_count < len(k.server_name):
            # the names themselves only for the flows that get one: most packets carry none
            pos = _first_per_run(sid, present(k.server_name)[order])
            s = slot[sid[pos]]
            unset = np.array([v is None for v in a["server"][s]], dtype=bool)
            if unset.any():
                a["server"][s[unset]] = np.array(k.server_name.take(order[pos[unset]]).to_pylist(), dtype=object)

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

    def _first_value(self, name: str, slot: np.ndarray, run_id: np.ndarray, values: np.ndarray,
                     valid: np.ndarray, column: int | None = None) -> None:
        """Set ``name`` of flows that have none yet to their first valid value in this batch."""
        pos = _first_per_run(run_id, valid)
        if not len(pos):
            return
        a = self.arrays
        s = slot[run_id[pos]]
        flag = a[name + "_valid"] if name + "_valid" in a else None
        if column is not None:
            assert flag is not None
            unset = ~flag[s, column]
            a[name][s[unset], column] = values[pos[unset]]
            flag[s[unset], column] = True
        elif flag is not None:
            unset = ~flag[s]
            a[name][s[unset]] = values[pos[unset]]
            flag[s[unset]] = True
        else:  # no validity column: 0 means unset
            unset = a[name][s] == 0
            a[name][s[unset]] = values[pos[unset]]


def _run_starts(keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a sorted array."""
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return np.flatnonzero(first)


def _bits(flags: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(packets, len(index)) 0/1 bytes: the TCP flag bits ``index`` of each packet (one unpack, not a
    compare per flag)."""
    return np.unpackbits(flags.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, index]


def _first_per_run(run_id: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Position of the first valid element of each run (``run_id`` sorted ascending)."""
    pos = np.flatnonzero(valid)
    if len(pos) < 2:
        return pos
    r = run_id[pos]
    return pos[np.concatenate([[True], r[1:] != r[:-1]])]


def _run_iat(t: np.ndarray, prev: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per run: count, sum, squared deviations, min and max of ``t - prev`` where prev >= 0."""
    has = prev >= 0
    d = np.where(has, t - prev, 0).astype(np.float64)
    n_b = np.add.reduceat(has.astype(np.float64), runs)
    sum_b = np.add.reduceat(d, runs)
    mean = sum_b / np.maximum(n_b, 1)
    lengths = np.diff(np.append(runs, len(t)))
    dev = np.where(has, d - np.repeat(mean, lengths), 0.0)
    m2_b = np.add.reduceat(dev * dev, runs)
    min_b = np.minimum.reduceat(np.where(has, d, np.inf), runs)
    max_b = np.maximum.reduceat(np.where(has, d, -np.inf), runs)
    return n_b, sum_b, m2_b, min_b, max_b
