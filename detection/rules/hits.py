"""Stateless stage: a packet or flow table -> what each rule selects, pre-counted ("hits").

Runs where the data is (a decoder process for packets).  The selected rows of
a rule are counted per aggregation group, half-window bucket and distinct
value before they leave, on the raw columns, so a flood of 100,000 packets
travels on as a few rows and only those rows are turned into text.  Every hit
keeps the 5-tuple of its earliest event for the alert.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.features import FEATURES, with_features
from detection.grouping import Groups
from detection.rules.compiler import ADDRESS_FIELDS, CompiledRule, Table, address_halves
from detection.rules.model import Rule
from sensors.protocols.packets import ip_strings
from sensors.schema import Field, arrow_schema

HIT_SCHEMA_VERSION = 2
#: the event's 5-tuple and tunnel, carried from a hit to its alert
TUPLE_FIELDS: list[Field] = [
    Field("src_ip", pa.string(), "source address (inner when tunnelled)"),
    Field("dst_ip", pa.string(), "destination address"),
    Field("src_port", pa.uint16(), "source port"),
    Field("dst_port", pa.uint16(), "destination port"),
    Field("ip_proto", pa.uint8(), "IP protocol number"),
    Field("teid", pa.uint32(), "GTP-U TEID, null when not tunnelled in GTP-U"),
    Field("tunnel_src_ip", pa.string(), "outer source address, null when not tunnelled"),
    Field("tunnel_dst_ip", pa.string(), "outer destination address"),
    Field("flow_id", pa.int64(), "the flow, for flow rules (null for packet rules)"),
    Field("detail", pa.string(), "a detector's explanation (e.g. an anomaly's most unusual features), else null"),
]
HIT_FIELDS: list[Field] = [
    Field("rule", pa.uint16(), "index of the rule in the loaded rule list"),
    Field("group", pa.string(), "the rule's aggregate.by values: field=value,field=value"),
    Field("bucket", pa.int64(), "event time // the rule's hop (half its window)"),
    Field("value", pa.string(), "the rule's aggregate.field as text, for distinct counts"),
    Field("n", pa.int64(), "events of this rule, group, bucket and value"),
    Field("first_ts", pa.int64(), "earliest event time, ns since the epoch (UTC): packet ts or flow first_seen"),
    Field("last_ts", pa.int64(), "latest event time"),
    *[Field(f.name, f.type, f.doc + ", of the earliest event") for f in TUPLE_FIELDS],
]
HIT_SCHEMA = arrow_schema(HIT_FIELDS, "hits", HIT_SCHEMA_VERSION)


def text_column(col: pa.Array | pa.ChunkedArray, field: str) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if field in ADDRESS_FIELDS and pa.types.is_fixed_size_binary(col.type):
        hi, lo = address_halves(col)
        text = ip_strings(np.stack([hi, lo], axis=1))
        return pc.if_else(col.is_valid(), text, pa.scalar(None, pa.string()))
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.cast(pa.string())


class Matcher(Protocol):
    rule: Rule

    def matches(self, table: Table, cache: dict[str, Any] | None = None) -> np.ndarray: ...


class Everything:
    """Selects every row: the tables a stateful detector flagged are its hits as they are."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def matches(self, table: Table, cache: dict[str, Any] | None = None) -> np.ndarray:
        return np.ones(table.num_rows, dtype=bool)


class HitExtractor:
    """Evaluates every rule of one source on a table; ``hits(table)`` -> HIT_SCHEMA batch.

    ``matchers`` replace the rules' compiled selections (index, matcher), e.g. ``Everything``.
    """

    def __init__(self, rules: list[Rule], source: str, first_index: int = 0,
                 matchers: list[tuple[int, Matcher]] | None = None) -> None:
        self.source = source
        self.time_column = "first_seen" if source == "flows" else "ts"
        self.compiled: list[tuple[int, Matcher]] = matchers if matchers is not None else [
            (first_index + i, CompiledRule(r)) for i, r in enumerate(rules) if r.source == source]
        self.tuple_columns = [f.name for f in TUPLE_FIELDS]
        self.features = sorted({n for _, c in self.compiled for n in c.rule.fields()} & set(FEATURES.get(source, {})))

    def hits(self, table: Table) -> pa.RecordBatch:
        cache: dict[str, Any] = {}  # shared by the features and every rule's tests on this table
        table = with_features(table, self.source, self.features, cache) if self.features else table
        found = []  # (rule index, rule, counts per group/bucket/value, row of each count's earliest event)
        for index, compiled in self.compiled:
            rows = np.flatnonzero(compiled.matches(table, cache))
            if len(rows):
                found.append((index, compiled.rule, *self._count(table, rows, compiled.rule)))
        if not found:
            return pa.RecordBatch.from_pylist([], schema=HIT_SCHEMA)
        # the earliest events of all rules' counts, turned into text together (one call per column)
        firsts = np.concatenate([f[3] for f in found])
        keys = {k for _, rule, _, _ in found for k in (*rule.aggregate.by, rule.aggregate.field, rule.detail) if k}
        have = set(table.column_names)
        present = [c for c in self.tuple_columns if c in have]
        columns = list(dict.fromkeys([*present, *sorted(keys)]))
        first = table.select(columns).take(pa.array(firsts))
        text = {c: text_column(first.column(c), c) for c in columns if c in keys or c in ADDRESS_FIELDS}
        n = len(firsts)
        cols: dict[str, Any] = {
            "rule": pa.array(np.concatenate([np.full(len(f[3]), f[0], dtype=np.uint16) for f in found])),
            "bucket": pa.array(np.concatenate([f[2]["bucket"] for f in found])),
            "n": pa.array(np.concatenate([f[2]["n"] for f in found])),
            "first_ts": pa.array(np.concatenate([f[2]["first_ts"] for f in found])),
            "last_ts": pa.array(np.concatenate([f[2]["last_ts"] for f in found])),
        }
        groups, values, details, start = [], [], [], 0
        for _, rule, _, rows in found:
            end = start + len(rows)
            details.append(text[rule.detail][start:end] if rule.detail else
                           first.column("detail")[start:end] if "detail" in present else
                           pa.nulls(len(rows), pa.string()))
            parts = [pc.binary_join_element_wise(k, pc.fill_null(text[k][start:end], ""), "=")
                     for k in rule.aggregate.by]
            groups.append(pc.binary_join_element_wise(*parts, ",") if parts else pa.array([""] * len(rows),
                                                                                            pa.string()))
            values.append(text[rule.aggregate.field][start:end] if rule.aggregate.field
                          else pa.nulls(len(rows), pa.string()))
            start = end
        cols["group"] = pa.concat_arrays(groups)
        cols["value"] = pa.concat_arrays(values)
        cols["detail"] = pa.concat_arrays([d.combine_chunks() if isinstance(d, pa.ChunkedArray) else d.cast(pa.string())
                                           for d in details])
        for name in self.tuple_columns:
            if name == "detail":
                continue
            if name not in present:
                cols[name] = pa.nulls(n, HIT_SCHEMA.field(name).type)
            else:
                cols[name] = text[name] if name in ADDRESS_FIELDS else first.column(name)
        arrays = [cols[f.name].combine_chunks() if isinstance(cols[f.name], pa.ChunkedArray) else cols[f.name]
                  for f in HIT_SCHEMA]
        return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, HIT_SCHEMA)], schema=HIT_SCHEMA)

    def _count(self, table: Table, rows: np.ndarray, rule: Rule) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A rule's selected rows -> counts per (group, bucket, value), and the row of each one's earliest event.

        Grouped with numpy (:mod:`detection.grouping`), in order of each group's first row: a decoder
        process that never calls an Acero group-by does not load Acero at all (~20 ms).
        """
        agg = rule.aggregate
        ts = np.asarray(table.column(self.time_column).take(pa.array(rows)).cast(pa.int64())
                        .to_numpy(zero_copy_only=False))
        order = np.argsort(ts, kind="stable")  # ties keep input order, as the window stage's merge does
        rank = np.empty(len(rows), dtype=np.int64)  # position in time order
        rank[order] = np.arange(len(rows))
        keys = list(dict.fromkeys([*agg.by, *([agg.field] if agg.field else [])]))
        selected = table.select(keys).take(pa.array(rows))
        groups = Groups(selected.columns, parts=[ts // agg.hop_ns])
        return ({"bucket": ts[groups.first] // agg.hop_ns, "n": groups.count(), "first_ts": groups.min(ts),
                 "last_ts": groups.max(ts)}, rows[order[groups.min(rank)]])
