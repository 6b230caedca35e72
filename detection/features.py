"""Derived columns that rules can test and count, computed per batch from decoded fields.

The decoders say what is on the wire; what it *means* for detection (the
registered domain of a query, how random its labels look) is computed here,
vectorized, and only for the columns some loaded rule reads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import present
from sensors.schema import Field

# a registered domain: the last two labels, or three under common second-level
# public suffixes of country domains (example.com.cn, example.co.uk); a top-level
# label is letters (or punycode): dnscat2's direct mode ends in hex, not a TLD
TLD = r"(?:[a-z]{2,24}|xn--[a-z0-9-]{1,59})"
REGISTERED_DOMAIN = rf"(?P<d>[^.]+\.(?:(?:com|net|org|gov|edu|ac|co|gob|mil)\.[a-z]{{2}}|{TLD}))\.?$"


def _strings(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


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


def _dns(f: Callable[[pa.Array], pa.Array]) -> Callable[[pa.Table | pa.RecordBatch], pa.Array]:
    return lambda table: on_valid(f, _strings(table.column("dns_qname")))


def on_valid(f: Callable[[pa.Array], pa.Array], values: pa.Array) -> pa.Array:
    """``f`` of the non-null values only, null elsewhere: a packet batch has a name (a banner, a header) in a
    few rows of thousands, and Arrow's string kernels cost per row, null or not, and per call (a regular
    expression is compiled for each): ~1.3 ms for an all-null column of 77k packets."""
    if not values.null_count:
        return f(values)
    if values.null_count == len(values):  # the usual case: none at all
        return pa.nulls(len(values), f(values.slice(0, 0)).type)
    valid = present(values)
    rows = np.flatnonzero(valid)
    at = np.zeros(len(values), dtype=np.int64)
    at[rows] = np.arange(len(rows))
    return f(values.take(pa.array(rows))).take(pa.array(at, mask=~valid))


#: name -> (doc, type, compute); packet-source features
PACKET_FEATURES: dict[str, tuple[Field, Callable[[pa.Table | pa.RecordBatch], pa.Array]]] = {
    "dns_registered_domain": (Field("dns_registered_domain", pa.string(),
                                    "registered domain of dns_qname (example.com, example.com.cn), lower case"),
                              _dns(registered_domain)),
    "dns_subdomain_len": (Field("dns_subdomain_len", pa.int32(),
                                "characters in front of the registered domain of dns_qname"),
                          _dns(lambda q: pc.if_else(q.is_valid(), pc.max_element_wise(
                              pc.subtract(pc.utf8_length(q), pc.add(pc.utf8_length(registered_domain(q)), 1)),
                              0), None).cast(pa.int32()))),
    "dns_label_max": (Field("dns_label_max", pa.int32(), "length of the longest label of dns_qname"),
                      _dns(longest_label)),
    "dns_qname_entropy": (Field("dns_qname_entropy", pa.float64(),
                                "Shannon entropy of dns_qname's characters, bits per character"),
                          _dns(shannon_entropy)),
}
FEATURES = {"packets": PACKET_FEATURES, "flows": {}}


def feature_fields(source: str) -> list[Field]:
    return [f for f, _ in FEATURES[source].values()]


def with_features(table: pa.Table | pa.RecordBatch, source: str, names: list[str]) -> pa.Table | pa.RecordBatch:
    """``table`` plus the derived columns ``names`` (those it lacks)."""
    for name in names:
        if name in FEATURES[source] and name not in table.column_names:
            field, compute = FEATURES[source][name]
            table = table.append_column(pa.field(name, field.type), compute(table).cast(field.type))
    return table
