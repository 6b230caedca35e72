"""Stateless stage: a packet or flow table -> the rows each rule selects ("hits").

Runs where the data is (a decoder process for packets), so only the few
selected rows travel on to the stateful window stage.  Hits of all rules share
one schema: the rule's index, the event time, its aggregation group and
distinct value as text, and the event's 5-tuple for the alert.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.flows.export import ip_strings
from detection.rules.compiler import ADDRESS_FIELDS, CompiledRule, Table, address_halves
from detection.rules.model import Rule
from sensors.schema import Field, arrow_schema

HIT_SCHEMA_VERSION = 1
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
]
HIT_FIELDS: list[Field] = [
    Field("rule", pa.uint16(), "index of the rule in the loaded rule list"),
    Field("ts", pa.int64(), "event time, ns since the epoch (UTC): the packet's, or the flow's first_seen"),
    Field("group", pa.string(), "the rule's aggregate.by values: field=value,field=value"),
    Field("value", pa.string(), "the rule's aggregate.field as text, for distinct counts"),
    *TUPLE_FIELDS,
]
HIT_SCHEMA = arrow_schema(HIT_FIELDS, "hits", HIT_SCHEMA_VERSION)


def _text(col: pa.Array | pa.ChunkedArray, field: str) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if field in ADDRESS_FIELDS and pa.types.is_fixed_size_binary(col.type):
        hi, lo = address_halves(col)
        text = ip_strings(np.stack([hi, lo], axis=1))
        return pc.if_else(col.is_valid(), text, pa.scalar(None, pa.string()))
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.cast(pa.string())


class HitExtractor:
    """Evaluates every rule of one source on a table; ``hits(table)`` -> HIT_SCHEMA batch."""

    def __init__(self, rules: list[Rule], source: str, first_index: int = 0) -> None:
        self.source = source
        self.compiled = [(first_index + i, CompiledRule(r)) for i, r in enumerate(rules) if r.source == source]

    def hits(self, table: Table) -> pa.RecordBatch:
        parts = []
        for index, compiled in self.compiled:
            rows = np.flatnonzero(compiled.matches(table))
            if len(rows):
                parts.append(self._rows(table.take(pa.array(rows)), index, compiled.rule))
        if not parts:
            return pa.RecordBatch.from_pylist([], schema=HIT_SCHEMA)
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]

    def _rows(self, sel: Table, index: int, rule: Rule) -> pa.RecordBatch:
        n = sel.num_rows
        agg = rule.aggregate
        parts = [pc.binary_join_element_wise(f, pc.fill_null(_text(sel.column(f), f), ""), "=") for f in agg.by]
        group = pc.binary_join_element_wise(*parts, ",") if parts else pa.array([""] * n, pa.string())
        value = _text(sel.column(agg.field), agg.field) if agg.field else pa.nulls(n, pa.string())
        time_col = "ts" if self.source == "packets" else "first_seen"
        cols = {
            "rule": pa.array(np.full(n, index, dtype=np.uint16)),
            "ts": sel.column(time_col).cast(pa.int64()),
            "group": group,
            "value": value,
        }
        for name in ("src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"):
            cols[name] = _text(sel.column(name), name)
        for name in ("src_port", "dst_port", "ip_proto", "teid"):
            cols[name] = sel.column(name)
        cols["flow_id"] = sel.column("flow_id") if "flow_id" in sel.column_names else pa.nulls(n, pa.int64())
        arrays = [cols[f.name].combine_chunks() if isinstance(cols[f.name], pa.ChunkedArray) else cols[f.name]
                  for f in HIT_SCHEMA]
        return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, HIT_SCHEMA)], schema=HIT_SCHEMA)
