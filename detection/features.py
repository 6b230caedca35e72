"""Derived columns that rules can test and count, computed per batch from decoded fields.

The decoders say what is on the wire; what it *means* for detection (the
registered domain of a query, how random its labels look) is computed here,
vectorized, and only for the columns some loaded rule reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import one_chunk, present, true_mask
from sensors.protocols.packets import masked_array
from sensors.schema import Field

# a registered domain: the last two labels, or three under common second-level
# public suffixes of country domains (example.com.cn, example.co.uk); a top-level
# label is letters (or punycode): dnscat2's direct mode ends in hex, not a TLD
TLD = r"(?:[a-z]{2,24}|xn--[a-z0-9-]{1,59})"
REGISTERED_DOMAIN = rf"(?P<d>[^.]+\.(?:(?:com|net|org|gov|edu|ac|co|gob|mil)\.[a-z]{{2}}|{TLD}))\.?$"


def registered_domain(names: pa.Array) -> pa.Array:
    """``a.b.example.com.cn`` -> ``example.com.cn`` (lower case); "" for names without a valid
    top-level label (so such names still group together), null for null names."""
    found = pc.struct_field(pc.extract_regex(pc.utf8_lower(names), REGISTERED_DOMAIN), "d")
    return pc.if_else(names.is_valid(), pc.fill_null(found, ""), pa.scalar(None, pa.string()))


def longest_label(names: pa.Array) -> pa.Array:
    """Length of the longest label of each name (null for null names)."""
    labels = pc.split_pattern(names, ".")
    flat = pc.utf8_length(pc.list_flatten(labels)).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    out = np.zeros(len(names), dtype=np.int32)
    np.maximum.at(out, parents, flat)
    return pa.array(out, mask=~present(names))


def shannon_entropy(texts: pa.Array) -> pa.Array:
    """Shannon entropy in bits per character of each string's bytes (null for null, 0 for empty)."""
    texts = texts.cast(pa.large_string())
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset:texts.offset + len(texts) + 1]
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8) if texts.buffers()[2] is not None else \
        np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    data = data[offsets[0]:offsets[-1]]
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    pairs, counts = np.unique(rows * 256 + data, return_counts=True)
    owner = pairs // 256
    p = counts / np.maximum(lengths[owner], 1)
    entropy = np.bincount(owner, weights=-p * np.log2(p), minlength=len(texts))
    return pa.array(entropy, mask=~present(texts))


def _dns(f: Callable[[pa.Array, dict[str, Any]], pa.Array]
         ) -> Callable[[pa.Table | pa.RecordBatch, dict[str, Any]], pa.Array]:
    def compute(table: pa.Table | pa.RecordBatch, cache: dict[str, Any]) -> pa.Array:
        values = PresentValues.of(table.column("dns_qname"), "dns_qname", cache)
        return values.scatter(f(values.values, cache))
    return compute


def _registered(names: pa.Array, cache: dict[str, Any]) -> pa.Array:
    """:func:`registered_domain` of a batch's query names, once per batch (two features read it: its regular
    expression is compiled on every call, ~1 ms)."""
    if "values:dns_registered_domain" not in cache:
        cache["values:dns_registered_domain"] = registered_domain(names)
    found: pa.Array = cache["values:dns_registered_domain"]
    return found


def _subdomain_len(names: pa.Array, cache: dict[str, Any]) -> pa.Array:
    """Characters in front of the registered domain (0 when there are none)."""
    return pc.if_else(names.is_valid(), pc.max_element_wise(
        pc.subtract(pc.utf8_length(names), pc.add(pc.utf8_length(_registered(names, cache)), 1)), 0), None)


class PresentValues:
    """A column's non-null values and their rows.

    A packet batch has a name (a query, a banner, a header) in a few rows of
    thousands, and Arrow's string kernels cost per row, null or not, and per
    call (a regular expression is compiled for each): ~1.3 ms for an all-null
    column of 77k packets.  So tests and features run on these values alone,
    taken once per column and batch (``cache``), and their results go back to
    the batch's rows.
    """

    def __init__(self, column: pa.Array | pa.ChunkedArray) -> None:
        column = one_chunk(column)
        self.n = len(column)
        self.rows: np.ndarray | None = None  # None: every row has a value
        self.values = column
        if column.null_count:
            self.rows = np.flatnonzero(present(column))
            self.values = column.take(pa.array(self.rows)) if len(self.rows) else column.slice(0, 0)

    @classmethod
    def of(cls, column: pa.Array | pa.ChunkedArray, name: str, cache: dict[str, Any]) -> PresentValues:
        """Column ``name``'s, made once per table: ``cache`` is the table's."""
        key = "present:" + name
        if key not in cache:
            cache[key] = cls(column)
        found: PresentValues = cache[key]
        return found

    def mask(self, test: pa.Array) -> np.ndarray:
        """A boolean result on the values -> a mask over the rows (False where the column is null)."""
        hit = true_mask(test)
        if self.rows is None:
            return hit
        out = np.zeros(self.n, dtype=bool)
        out[self.rows] = hit
        return out

    def scatter(self, result: pa.Array) -> pa.Array:
        """A result on the values -> one over the rows (null where the column is null)."""
        if self.rows is None:
            return result
        if not len(self.rows):
            return pa.nulls(self.n, result.type)
        result = one_chunk(result)
        valid = np.zeros(self.n, dtype=bool)
        valid[self.rows] = present(result)
        if pa.types.is_integer(result.type) or pa.types.is_floating(result.type):  # numbers: placed, not taken
            values = np.zeros(self.n, dtype=result.type.to_pandas_dtype())
            filled = pc.fill_null(result, 0) if result.null_count else result
            values[self.rows] = np.asarray(filled.to_numpy(zero_copy_only=False))
            return masked_array(values, valid, result.type)
        at = np.zeros(self.n, dtype=np.int64)
        at[self.rows] = np.arange(len(self.rows))
        return result.take(masked_array(at, valid, pa.int64()))


#: name -> (doc, type, compute); packet-source features
PACKET_FEATURES: dict[str, tuple[Field, Callable[[pa.Table | pa.RecordBatch, dict[str, Any]], pa.Array]]] = {
    "dns_registered_domain": (Field("dns_registered_domain", pa.string(),
                                    "registered domain of dns_qname (example.com, example.com.cn), lower case"),
                              _dns(_registered)),
    "dns_subdomain_len": (Field("dns_subdomain_len", pa.int32(),
                                "characters in front of the registered domain of dns_qname"),
                          _dns(_subdomain_len)),
    "dns_label_max": (Field("dns_label_max", pa.int32(), "length of the longest label of dns_qname"),
                      _dns(lambda names, cache: longest_label(names))),
    "dns_qname_entropy": (Field("dns_qname_entropy", pa.float64(),
                                "Shannon entropy of dns_qname's characters, bits per character"),
                          _dns(lambda names, cache: shannon_entropy(names))),
}
FEATURES = {"packets": PACKET_FEATURES, "flows": {}}
#: the columns each feature is computed from
FEATURE_INPUTS = {name: ("dns_qname",) for name in PACKET_FEATURES}


def columns_read(names: Iterable[str]) -> set[str]:
    """The table columns behind ``names``: a feature's inputs, any other name itself."""
    return {c for name in names for c in FEATURE_INPUTS.get(name, (name,))}


def feature_fields(source: str) -> list[Field]:
    return [f for f, _ in FEATURES[source].values()]


def with_features(table: pa.Table | pa.RecordBatch, source: str, names: list[str],
                  cache: dict[str, Any] | None = None) -> pa.Table | pa.RecordBatch:
    """``table`` plus the derived columns ``names`` (those it lacks); ``cache``: see :meth:`PresentValues.of`."""
    cache = {} if cache is None else cache
    for name in names:
        if name in FEATURES[source] and name not in table.column_names:
            field, compute = FEATURES[source][name]
            table = table.append_column(pa.field(name, field.type), compute(table, cache).cast(field.type))
    return table
