"""Flow table storage: one slot per live flow, every field a numpy array.

Accumulators are mergeable (counts, sums, sums of squares, minima, maxima), so
a flow updated by many batches ends with the same values as one update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from detection.flows.schema import SPLT_PACKETS, TCP_FLAGS

if TYPE_CHECKING:
    from detection.flows.keys import PacketKeys

FLAG_BITS = np.array([{"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ece": 64, "cwr": 128}[f]
                      for f in TCP_FLAGS], dtype=np.int64)
DIR_FLAGS = ("syn", "fin", "rst")  # also counted per direction
DIR_BITS = np.array([2, 1, 4], dtype=np.int64)

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
        """Add the packets (sorted by flow, then time) to their segments' slots."""
        a = self.arrays
        nseg = len(spos)
        n = len(sid)
        slot = seg_slot
        key2 = sid * 2 + pdir
        frame = k.frame_len[order].astype(np.float64)
        payload = k.payload_len[order]
        # counts and sizes per direction
        pk2 = np.bincount(key2, minlength=2 * nseg).reshape(nseg, 2)
        prior = a["pkts"][slot].sum(axis=1)  # packets before this batch (0 for new flows)
        a["pkts"][slot] += pk2
        a["bytes"][slot] += np.bincount(key2, weights=frame, minlength=2 * nseg).reshape(nseg, 2).astype(np.int64)
        a["payload"][slot] += np.bincount(key2, weights=payload, minlength=2 * nseg).reshape(nseg, 2).astype(np.int64)
        a["ps_sum"][slot] += np.bincount(key2, weights=frame, minlength=2 * nseg).reshape(nseg, 2)
        a["ps_sq"][slot] += np.bincount(key2, weights=frame * frame, minlength=2 * nseg).reshape(nseg, 2)
        mn = np.full(2 * nseg, np.inf)
        mx = np.full(2 * nseg, -np.inf)
        np.minimum.at(mn, key2, frame)
        np.maximum.at(mx, key2, frame)
        a["ps_min"][slot] = np.minimum(a["ps_min"][slot], mn.reshape(nseg, 2))
        a["ps_max"][slot] = np.maximum(a["ps_max"][slot], mx.reshape(nseg, 2))
        # inter-arrival times: bidirectional (index 2), then per direction
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = t[:-1]
        prev[spos] = np.where(cont, a["last_ns"][slot], -1)
        self._iat(slot, sid, nseg, 2, t, prev)
        o2 = np.argsort(key2, kind="stable")
        t2, k2 = t[o2], key2[o2]
        first2 = np.empty(n, dtype=bool)
        first2[0] = True
        np.not_equal(k2[1:], k2[:-1], out=first2[1:])
        prev2 = np.empty(n, dtype=np.int64)
        prev2[1:] = t2[:-1]
        f = np.flatnonzero(first2)
        s_of, d_of = k2[f] // 2, k2[f] % 2
        prev2[f] = np.where(cont[s_of], a["last_dir_ns"][slot[s_of], d_of], -1)
        for d in (0, 1):
            m = (k2 % 2) == d
            self._iat(slot, k2[m] // 2, nseg, d, t2[m], prev2[m])
        last_dir = np.full(2 * nseg, -1, dtype=np.int64)
        np.maximum.at(last_dir, key2, t)
        a["last_dir_ns"][slot] = np.maximum(a["last_dir_ns"][slot], last_dir.reshape(nseg, 2))
        seg_end = np.append(spos[1:], n) - 1
        a["last_ns"][slot] = t[seg_end]
        a["last_ms"][slot] = t[seg_end] // 1_000_000
        # TCP flags
        bits = (flags[:, None] & FLAG_BITS[None, :]) != 0
        for j in range(len(FLAG_BITS)):
            a["flags"][slot, j] += np.bincount(sid, weights=bits[:, j], minlength=nseg).astype(np.int64)
        for j, bit in enumerate(DIR_BITS):
            c = np.bincount(key2, weights=(flags & bit) != 0, minlength=2 * nseg).reshape(nseg, 2)
            a["dir_flags"][slot, :, j] += c.astype(np.int64)
        a["errors"][slot] += np.bincount(sid, weights=(k.decode_status[order] != 0), minlength=nseg).astype(np.int64)
        # first packets: payload sizes and directions
        rank = prior[sid] + (np.arange(n) - spos[sid])
        early = rank < a["splt_bytes"].shape[1]
        a["splt_bytes"][slot[sid[early]], rank[early]] = payload[early]
        a["splt_dir"][slot[sid[early]], rank[early]] = pdir[early]
        # first value per flow of the sparse attributes
        self._first_value("qfi", "qfi_valid", slot, sid, k.qfi[order], k.qfi_valid[order])
        app = k.app_proto[order]
        has_app = app != 0
        if has_app.any():
            segs, idx = np.unique(sid[has_app], return_index=True)
            vals = app[has_app][idx]
            s = slot[segs]
            a["app"][s] = np.where(a["app"][s] == 0, vals, a["app"][s])
        tv = k.teid_valid[order]
        if tv.any():
            for d in (0, 1):
                m = tv & (pdir == d)
                if m.any():
                    segs, idx = np.unique(sid[m], return_index=True)
                    s = slot[segs]
                    unset = ~a["teid_valid"][s, d]
                    a["teid"][s[unset], d] = k.teid[order][m][idx][unset]
                    a["teid_valid"][s[unset], d] = True
        names = k.server_name.take(order) if k.server_name.null_count < len(k.server_name) else None
        if names is not None:
            valid = np.asarray(names.is_valid().to_numpy(zero_copy_only=False))
            segs, idx = np.unique(sid[valid], return_index=True)
            s = slot[segs]
            unset = np.array([v is None for v in a["server"][s]], dtype=bool)
            if unset.any():
                vals = names.filter(pa.array(valid)).take(idx[unset]).to_pylist()
                a["server"][s[unset]] = np.array(vals, dtype=object)

    def _iat(self, slot: np.ndarray, seg: np.ndarray, nseg: int, col: int, t: np.ndarray, prev: np.ndarray) -> None:
        a = self.arrays
        has = prev >= 0
        if not has.any():
            return
        d = (t - prev)[has].astype(np.float64)
        s = seg[has]
        nb = np.bincount(s, minlength=nseg).astype(np.float64)
        sb = np.bincount(s, weights=d, minlength=nseg)
        mb = sb / np.maximum(nb, 1)
        m2b = np.bincount(s, weights=(d - mb[s]) ** 2, minlength=nseg)
        na = a["iat_n"][slot, col].astype(np.float64)
        ma = a["iat_sum"][slot, col] / np.maximum(na, 1)
        tot = np.maximum(na + nb, 1)
        delta = mb - ma
        a["iat_m2"][slot, col] += m2b + delta * delta * na * nb / tot
        a["iat_n"][slot, col] += nb.astype(np.int64)
        a["iat_sum"][slot, col] += sb
        mn = np.full(nseg, np.inf)
        mx = np.full(nseg, -np.inf)
        np.minimum.at(mn, s, d)
        np.maximum.at(mx, s, d)
        a["iat_min"][slot, col] = np.minimum(a["iat_min"][slot, col], mn)
        a["iat_max"][slot, col] = np.maximum(a["iat_max"][slot, col], mx)

    def _first_value(self, name: str, valid_name: str, slot: np.ndarray, sid: np.ndarray,
                     values: np.ndarray, valid: np.ndarray) -> None:
        if not valid.any():
            return
        a = self.arrays
        segs, idx = np.unique(sid[valid], return_index=True)
        s = slot[segs]
        unset = ~a[valid_name][s]
        a[name][s[unset]] = values[valid][idx][unset]
        a[valid_name][s[unset]] = True
