"""Indicators -> which packets show them, vectorized.

Each indicator type is compared with its columns (``MATCHED_TYPES``) on a whole
batch at once:

- **ip**: the four address columns against addresses and networks: one binary
  search per distinct prefix length, longest first (the most specific network
  names the match);
- **domain**: DNS query names, TLS SNIs and HTTP hosts against the names and
  every parent domain of them (``a.b.evil.example`` matches ``evil.example``);
- **sni**, **ja3**, **ja4**: exact, on the ClientHello's columns;
- **url**: HTTP host and request target, with and without the query string.

Every candidate value of one type (all columns, all parent domains) goes into
one hash lookup per batch: Arrow builds the indicator set's hash table anew on
each lookup, which costs more than the lookup itself.

An event matches an indicator only within the indicator's validity window
(``valid_from`` .. ``valid_until``, compared with the packet's time, so a replay
of an old capture is judged by what was known to be bad then).  When several
feeds list the same value, the match names the one with the highest level.

The result is the matching packets, one row per (packet, indicator), turned so
that ``src_ip`` is the client (the side with the higher port: a DNS answer or a
server's reply counts for the host that asked), with the feed, indicator and a
``detail`` for the alert.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.intel.indicators import LEVELS, MATCHED_TYPES
from detection.rules.compiler import address_halves
from detection.rules.hits import text_column
from detection.rules.model import Aggregate, Rule, derived_signature_id
from sensors.masks import present

MAX_LABELS = 12  # parent domains tried at most
NEVER_NS, FOREVER_NS = -(1 << 63), (1 << 63) - 1
#: one rule per level: its alerts' grade follows the indicator's level
RULE_IDS = {"critical": "5d0c7a3e-91b4-4f0e-a6f3-0b2c5e7d1a01", "high": "5d0c7a3e-91b4-4f0e-a6f3-0b2c5e7d1a02",
            "medium": "5d0c7a3e-91b4-4f0e-a6f3-0b2c5e7d1a03", "low": "5d0c7a3e-91b4-4f0e-a6f3-0b2c5e7d1a04"}
GROUP_BY = ("src_ip", "intel_feed", "intel_indicator")
TUPLE = ("ts", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "teid", "tunnel_src_ip", "tunnel_dst_ip")
#: every packet column a match reads
PACKET_COLUMNS = frozenset((*TUPLE, *(c for columns in MATCHED_TYPES.values() for c in columns)))


def intel_rules() -> list[Rule]:
    """The rules intelligence matches raise alerts under (always loaded, so every process agrees on them)."""
    return [Rule(id=RULE_IDS[level], title=f"Threat intelligence indicator matched ({level})", status="stable",
                 level=level, source="packets", selections={}, condition="", category="Misc Attack",
                 description="Traffic to, from or naming an indicator of a configured intelligence feed (IP or "
                             "network, domain, URL, TLS SNI, JA3/JA4); the alert's group names the feed and "
                             "the indicator, its detail what was seen.",
                 tags=["attack.command_and_control", "attack.t1071", "liaowang.intel"], detector="intel",
                 aggregate=Aggregate(by=GROUP_BY, window_s=3600.0, threshold=1),
                 signature_id=derived_signature_id(RULE_IDS[level]))
            for level in LEVELS]


def _key64(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A 64-bit search key of 128-bit addresses: the low half for IPv4 (exact), mixed for IPv6 (a match
    is confirmed on both halves)."""
    return (hi * np.uint64(0x9E3779B97F4A7C15)) ^ lo


def _masks(prefix: int) -> tuple[np.uint64, np.uint64]:
    """(hi, lo) masks of the first ``prefix`` of 128 bits."""
    full = (1 << 64) - 1
    bits = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    return np.uint64(bits >> 64 & full), np.uint64(bits & full)


class IntelMatcher:
    """Compiled indicators (``INDICATOR_SCHEMA`` rows): ``match(packets)`` -> matches."""

    def __init__(self, indicators: pa.Table) -> None:
        t = indicators.filter(pc.is_in(indicators.column("type"), pa.array(list(MATCHED_TYPES))))
        rank = pc.index_in(t.column("level"), pa.array(list(LEVELS)))
        t = t.append_column("rank", rank).sort_by([("type", "ascending"), ("value", "ascending"),
                                                   ("rank", "ascending")])
        # one entry per (type, value): the highest level's
        key = pc.binary_join_element_wise(t.column("type"), t.column("value"), "|").combine_chunks()
        first = np.ones(len(key), dtype=bool)
        if len(key) > 1:
            first[1:] = np.asarray(pc.not_equal(key[1:], key[:-1]).to_numpy(zero_copy_only=False), dtype=bool)
        t = t.filter(pa.array(first))
        self.size = t.num_rows
        self._feed, self._type, self._value, self._level = (t.column(c).combine_chunks()
                                                            for c in ("feed", "type", "value", "level"))
        self._from = np.asarray(pc.fill_null(t.column("valid_from").cast(pa.int64()), NEVER_NS)
                                .to_numpy(zero_copy_only=False), dtype=np.int64)
        self._until = np.asarray(pc.fill_null(t.column("valid_until").cast(pa.int64()), FOREVER_NS)
                                 .to_numpy(zero_copy_only=False), dtype=np.int64)
        types = np.asarray(self._type.to_numpy(zero_copy_only=False))
        self._exact = {str(kind): (self._value.filter(pa.array(types == kind)), np.flatnonzero(types == kind))
                       for kind in np.unique(types) if kind != "ip"}
        # networks by prefix length (in the 128-bit space, IPv4 mapped), longest first
        ips = np.flatnonzero(types == "ip")
        self._networks = []  # per prefix length: masks, and the networks sorted by their 64-bit key
        if len(ips):
            parts = pc.split_pattern(self._value.take(pa.array(ips)), "/", max_splits=1)
            hi, lo = address_halves(pc.list_element(parts, 0))
            v6 = np.asarray(pc.match_substring(self._value.take(pa.array(ips)), ":").to_numpy(zero_copy_only=False),
                            dtype=bool)
            given = pc.list_element(pc.if_else(pc.equal(pc.list_value_length(parts), 2), parts,
                                               pa.scalar(["", "-1"], parts.type)), 1)
            prefix = np.asarray(given.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
            prefix = np.where(prefix < 0, 128, np.where(v6, prefix, prefix + 96))
            for length in sorted(np.unique(prefix).tolist(), reverse=True):
                mine = np.flatnonzero(prefix == length)
                mhi, mlo = _masks(length)
                nhi, nlo = hi[mine] & mhi, lo[mine] & mlo
                keys = _key64(nhi, nlo)
                order = np.argsort(keys, kind="stable")
                self._networks.append(((mhi, mlo), (keys[order], nhi[order], nlo[order], ips[mine][order])))

    def match(self, packets: pa.RecordBatch | pa.Table) -> pa.Table:
        """The matching packets, one row per (packet, indicator) (see the module's doc)."""
        if not self.size or not packets.num_rows:
            return _empty()
        n = packets.num_rows
        names = list(packets.column_names)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, entries, column index in names)
        for name in MATCHED_TYPES["ip"]:
            if self._networks and name in names and packets.column(name).null_count < n:
                rows, entries = self._ip(packets.column(name))
                found.append((rows, entries, np.full(len(rows), names.index(name))))
        # every type's candidate values are looked up together: one lookup per type and batch
        for kind in ("domain", "sni", "ja3", "ja4", "url"):
            if kind not in self._exact:
                continue
            candidates = self._urls(packets, names) if kind == "url" else [
                c for name in MATCHED_TYPES[kind] if name in names
                for c in self._names(packets.column(name), names.index(name) * n, kind)]
            keys, entries = self._best(kind, candidates)
            found.append((keys % n, entries, keys // n))
        found = [f for f in found if len(f[0])]
        if not found:
            return _empty()
        rows, entry, column = (np.concatenate(x) for x in zip(*found))
        ts = np.asarray(packets.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False))[rows]
        valid = (ts >= self._from[entry]) & (ts <= self._until[entry])  # expiry, by event time
        if not valid.any():
            return _empty()
        rows, entry, column = rows[valid], entry[valid], column[valid]
        # one row per (packet, indicator), in packet order: an address seen in two columns counts once
        _, first = np.unique(rows.astype(np.int64) * (self.size + 1) + entry, return_index=True)
        first = np.sort(first)
        return self._rows(packets, rows[first], entry[first], names, column[first])

    # -- per type -----------------------------------------------------------------

    def _ip(self, col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Per address, the longest network (or address) listed: a binary search per prefix length."""
        valid = present(col)
        hi, lo = address_halves(col)
        best = np.full(len(hi), -1, dtype=np.int64)
        for (mhi, mlo), (keys, net_hi, net_lo, entries) in self._networks:
            mh, ml = hi & mhi, lo & mlo
            key = _key64(mh, ml)
            pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            take = (keys[pos] == key) & (net_hi[pos] == mh) & (net_lo[pos] == ml) & (best < 0) & valid
            best[take] = entries[pos[take]]
        rows = np.flatnonzero(best >= 0)
        return rows, best[rows]

    def _best(self, kind: str, candidates: list[tuple[np.ndarray, int, pa.Array]]) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (ids, rank, values) looked up in one pass; per id, the hit of the lowest rank."""
        candidates = [c for c in candidates if len(c[0])]
        if not candidates:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        values = pa.concat_arrays([c[2].combine_chunks() if isinstance(c[2], pa.ChunkedArray) else c[2]
                                   for c in candidates])
        ids = np.concatenate([c[0] for c in candidates])
        ranks = np.concatenate([np.full(len(c[0]), c[1]) for c in candidates])
        keys, entries = self._exact[kind]
        idx = np.asarray(pc.fill_null(pc.index_in(values, value_set=keys), -1).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
        hit = idx >= 0
        ids, ranks, hits = ids[hit], ranks[hit], entries[idx[hit]]
        order = np.lexsort((ranks, ids))
        ids, hits = ids[order], hits[order]
        _, first = np.unique(ids, return_index=True)
        return ids[first], hits[first]

    def _names(self, col: pa.Array | pa.ChunkedArray, base: int, kind: str) -> list[tuple[np.ndarray, int, pa.Array]]:
        """A name column's candidates (ids ``base`` + row): the name itself, and for domains every parent
        domain, ranked by depth (the most specific listed name wins)."""
        rows = np.flatnonzero(present(col))
        if not len(rows):
            return []
        names = pc.utf8_lower(col.take(pa.array(rows)))
        if kind != "domain":
            return [(base + rows, 0, names)]
        names = pc.utf8_rtrim(pc.replace_substring_regex(names, r":\d+$", ""), ".")  # Host: name[:port]
        dots = np.asarray(pc.count_substring(names, ".").to_numpy(zero_copy_only=False), dtype=np.int64)
        out = [(base + rows, 0, names)]
        for k in range(1, min(int(dots.max()) + 1, MAX_LABELS)):
            deep = np.flatnonzero(dots >= k)
            out.append((base + rows[deep], k,
                        pc.replace_substring_regex(names.take(pa.array(deep)), f"^([^.]*\\.){{{k}}}", "")))
        return out

    def _urls(self, packets: pa.RecordBatch | pa.Table, names: list[str]) -> list[tuple[np.ndarray, int, pa.Array]]:
        """Request URLs (a lower-case host, then the target as sent), with and without the query string."""
        if "http_uri" not in names or "http_host" not in names:
            return []
        uri = packets.column("http_uri")
        rows = np.flatnonzero(present(uri))
        if not len(rows):
            return []
        target = uri.take(pa.array(rows))
        absolute = pc.replace_substring_regex(target, "^[A-Za-z][A-Za-z0-9+.-]*://", "")
        is_absolute = pc.not_equal(pc.utf8_length(absolute), pc.utf8_length(target))
        host = packets.column("http_host").take(pa.array(rows))
        named = pc.binary_join_element_wise(
            pc.utf8_rtrim(pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(host, "")), r":\d+$", ""), "."),
            target, "")
        parts = pc.extract_regex(pc.if_else(is_absolute, absolute, named), r"^(?P<host>[^/]*)(?P<path>.*)$")
        path = pc.struct_field(parts, "path")
        full = pc.binary_join_element_wise(pc.utf8_lower(pc.struct_field(parts, "host")),
                                           pc.if_else(pc.equal(path, ""), "/", path), "")
        base = names.index("http_uri") * packets.num_rows
        return [(base + rows, 0, full), (base + rows, 1, pc.replace_substring_regex(full, r"\?.*$", ""))]

    # -- output -------------------------------------------------------------------

    def _rows(self, packets: pa.RecordBatch | pa.Table, rows: np.ndarray, entry: np.ndarray,
              used: list[str], column_of: np.ndarray) -> pa.Table:
        """``used[column_of[i]]``: the column row i matched in."""
        have = set(packets.column_names)
        present = [c for c in TUPLE if c in have]
        t = pa.Table.from_batches([packets.select(present)]) if isinstance(packets, pa.RecordBatch) \
            else packets.select(present)
        t = t.take(pa.array(rows))
        for c in TUPLE:
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(len(rows), pa.binary(16) if c.endswith("_ip") else pa.uint16()))
        # what was seen, as text, from the column that matched
        seen = pa.nulls(len(rows), pa.string())
        for i in np.unique(column_of).tolist():
            column, mine = used[i], column_of == i
            values = text_column(packets.column(column).take(pa.array(rows)), column)
            if column == "http_uri" and "http_host" in packets.column_names:
                values = pc.binary_join_element_wise(
                    pc.fill_null(packets.column("http_host").take(pa.array(rows)).cast(pa.string()), ""),
                    values, "")
            seen = pc.if_else(pa.array(mine), values, seen)
        src_port = np.asarray(pc.fill_null(t.column("src_port"), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        dst_port = np.asarray(pc.fill_null(t.column("dst_port"), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        swap = pa.array((src_port < dst_port) & (src_port > 0))  # a server's packet: the client is the destination
        out = {
            "ts": t.column("ts"),
            "src_ip": pc.if_else(swap, t.column("dst_ip"), t.column("src_ip")),
            "dst_ip": pc.if_else(swap, t.column("src_ip"), t.column("dst_ip")),
            "src_port": pc.if_else(swap, t.column("dst_port"), t.column("src_port")),
            "dst_port": pc.if_else(swap, t.column("src_port"), t.column("dst_port")),
            **{c: t.column(c) for c in ("ip_proto", "teid", "tunnel_src_ip", "tunnel_dst_ip")},
        }
        e = pa.array(entry)
        feed, kind, value = self._feed.take(e), self._type.take(e), self._value.take(e)
        field = pa.array(np.array(used, dtype=object)[column_of], pa.string())
        out.update({"intel_feed": feed, "intel_type": kind, "intel_indicator": value,
                    "intel_level": self._level.take(e), "intel_field": field,
                    "detail": pc.binary_join_element_wise(feed, pa.scalar(": "), kind, pa.scalar(" "), value,
                                                          pa.scalar(" ("), field, pa.scalar(" "),
                                                          pc.fill_null(seen, ""), pa.scalar(")"), "")})
        return pa.table(out)


def _empty() -> pa.Table:
    return pa.table({"ts": pa.array([], pa.timestamp("ns", tz="UTC"))})
