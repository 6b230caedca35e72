"""Rule selections and conditions -> vectorized filters over Arrow tables.

Each field test is one Arrow/numpy kernel over the whole column; a selection
AND-s its tests, the condition combines selections with and/or/not and Sigma's
``1 of``/``all of`` quantifiers.  Nothing is evaluated row by row in Python.
String tests ignore case (as Sigma's do).  Address fields take IP addresses
and networks whether the column holds 16-byte addresses (packets) or text (flows).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.features import PresentValues, feature_fields
from detection.flows.keys import ip_halves as binary_ip_halves
from detection.flows.schema import FLOW_SCHEMA
from detection.rules.model import Condition, Rule
from sensors.masks import one_chunk, present, true_mask
from sensors.schema import PACKET_SCHEMA

ADDRESS_FIELDS = {"src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"}
SOURCE_SCHEMAS = {"packets": PACKET_SCHEMA, "flows": FLOW_SCHEMA}
Table: TypeAlias = pa.Table | pa.RecordBatch
Mask: TypeAlias = np.ndarray  # bool, one per row


def check_rule(rule: Rule) -> None:
    """Raise ValueError if the rule names unknown fields, misuses a modifier or has a bad condition."""
    schema = SOURCE_SCHEMAS[rule.source]
    for f in feature_fields(rule.source):
        schema = schema.append(pa.field(f.name, f.type))
    for name in rule.fields():
        if name not in schema.names:
            raise ValueError(f"unknown {rule.source} field '{name}'")
    for alts in rule.selections.values():
        for conds in alts:
            for c in conds:
                _check_condition(c, schema.field(c.field).type)
    parse_condition(rule.condition, list(rule.selections))


def _check_condition(c: Condition, ftype: pa.DataType) -> None:
    if c.modifier == "not":
        _check_condition(c.values[0], ftype)
        return
    text = pa.types.is_string(ftype) or pa.types.is_large_string(ftype)
    if c.modifier in ("contains", "startswith", "endswith", "re") and not text:
        raise ValueError(f"{c.field}|{c.modifier}: needs a text field")
    if c.modifier in ("gt", "gte", "lt", "lte", "bits_all", "bits_any", "bits_none"):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in c.values):
            raise ValueError(f"{c.field}|{c.modifier}: needs numbers")
    if c.modifier == "cidr":
        if c.field not in ADDRESS_FIELDS:
            raise ValueError(f"{c.field}|cidr: needs an address field")
        for v in c.values:
            try:
                ipaddress.ip_network(str(v), strict=False)
            except ValueError:
                raise ValueError(f"{c.field}|cidr: '{v}' is not a network") from None
    if c.modifier == "re":
        for v in c.values:
            try:
                re.compile(str(v))
            except re.error as exc:
                raise ValueError(f"{c.field}|re: bad regular expression '{v}': {exc}") from None
    if c.modifier in ("equals", "in") and c.field in ADDRESS_FIELDS:
        for v in c.values:
            if v is not None:
                try:
                    ipaddress.ip_address(str(v))
                except ValueError:
                    raise ValueError(f"{c.field}: '{v}' is not an IP address") from None


# -- the condition language -------------------------------------------------------------

_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*]+)")
Node = Callable[[dict[str, Mask], int], Mask]


def parse_condition(text: str, names: list[str]) -> Node:
    """``sel1 and not (sel2 or 1 of filter_*)`` -> a function of the selections' masks."""
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok.lower() != expected):
            raise ValueError(f"condition '{text}': expected {expected or 'more'} at token {pos + 1}")
        pos += 1
        return tok

    def chain(operand: Callable[[], Node], word: str, combine: Callable[[Node, Node], Node]) -> Node:
        left = operand()
        while (peek() or "").lower() == word:
            take()
            left = combine(left, operand())
        return left

    def expr() -> Node:
        return chain(term, "or", _either)

    def term() -> Node:
        return chain(factor, "and", _both)

    def factor() -> Node:
        tok = peek()
        if tok is None:
            raise ValueError(f"condition '{text}': ends too early")
        low = tok.lower()
        if low == "not":
            take()
            inner = factor()
            return lambda m, n: ~inner(m, n)
        if tok == "(":
            take()
            inner = expr()
            take(")")
            return inner
        if (low == "all" or low.isdigit()) and pos + 1 < len(tokens) and tokens[pos + 1].lower() == "of":
            take()
            take("of")
            pattern = take()
            chosen = names if pattern.lower() == "them" else fnmatch.filter(names, pattern)
            if not chosen:
                raise ValueError(f"condition '{text}': no selection matches '{pattern}'")
            if low == "all":
                return lambda m, n: np.logical_and.reduce([m[c] for c in chosen])
            need = int(low)
            return lambda m, n: np.sum([m[c] for c in chosen], axis=0) >= need
        name = take()
        if name not in names:
            raise ValueError(f"condition '{text}': unknown selection '{name}'")
        return lambda m, n: m[name]

    node = expr()
    if pos != len(tokens):
        raise ValueError(f"condition '{text}': unexpected '{tokens[pos]}'")
    return node


def _either(a: Node, b: Node) -> Node:
    return lambda m, n: a(m, n) | b(m, n)


def _both(a: Node, b: Node) -> Node:
    return lambda m, n: a(m, n) & b(m, n)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"condition '{text}': cannot read '{text[pos:]}'")
        out.append(m.group(1))
        pos = m.end()
    return out


# -- evaluation ------------------------------------------------------------------------


class CompiledRule:
    """A rule's selection and condition as a vectorized filter: ``matches(table)`` -> bool mask."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._condition = parse_condition(rule.condition, list(rule.selections))

    def matches(self, table: Table, cache: dict[str, Any] | None = None) -> Mask:
        """``cache``: shared by the rules evaluated on one table, so common tests run once."""
        n = table.num_rows
        cache = {} if cache is None else cache
        masks = {name: _any([_all([_test(table, c, cache) for c in conds], n) for conds in alts], n)
                 for name, alts in self.rule.selections.items()}
        return np.asarray(self._condition(masks, n), dtype=bool)


def _all(masks: list[Mask], n: int) -> Mask:
    out = np.ones(n, dtype=bool)
    for m in masks:
        out &= m
    return out


def _any(masks: list[Mask], n: int) -> Mask:
    out = np.zeros(n, dtype=bool)
    for m in masks:
        out |= m
    return out


def _test(table: Table, c: Condition, cache: dict[str, Any]) -> Mask:
    n = table.num_rows
    if c.modifier == "not":
        return ~_test(table, c.values[0], cache)
    col = table.column(c.field)
    if c.field in ADDRESS_FIELDS and c.modifier in ("equals", "in", "cidr"):
        return _address_test(col, c, cache)
    results = []
    for v in c.values:
        key = f"{c.field}|{c.modifier}|{v!r}"
        if key not in cache:
            cache[key] = _scalar_test(col, c.modifier, v, cache, c.field)
        results.append(cache[key])
    return _all(results, n) if c.match_all else _any(results, n)


def _numbers(col: pa.Array | pa.ChunkedArray, cache: dict[str, Any], field: str) -> tuple[np.ndarray, Mask | None]:
    """A numeric column as numpy values (arbitrary under nulls) and its validity (None: no nulls), once per table."""
    key = "num:" + field
    if key not in cache:
        # the value buffer as it is: what lies under a null is arbitrary, and every test ANDs the validity
        arr = one_chunk(col)
        if pa.types.is_boolean(arr.type):
            values = true_mask(arr)
        else:
            dtype = np.dtype(arr.type.to_pandas_dtype())
            data = arr.buffers()[1]
            values = np.zeros(len(arr), dtype=dtype) if data is None or not len(arr) else \
                np.frombuffer(data, dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)
        cache[key] = (values, present(arr) if arr.null_count else None)
    found: tuple[np.ndarray, Mask | None] = cache[key]
    return found


def _numeric_test(values: np.ndarray, valid: Mask | None, modifier: str, v: Any) -> Mask | None:
    """Numeric tests in numpy (None: not a numeric test)."""
    if isinstance(v, str):
        try:
            v = float(v) if "." in v else int(v, 0)
        except ValueError:
            return None
    if modifier in ("equals", "in"):
        out = values == v
    elif modifier in ("gt", "gte", "lt", "lte"):
        op = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[modifier]
        out = op(values, v)
    elif modifier in ("bits_all", "bits_any", "bits_none"):
        anded = values & values.dtype.type(int(v))
        out = anded == int(v) if modifier == "bits_all" else (anded != 0 if modifier == "bits_any" else anded == 0)
    else:
        return None
    return out & valid if valid is not None else np.asarray(out, dtype=bool)


def _scalar_test(col: pa.Array | pa.ChunkedArray, modifier: str, v: Any, cache: dict[str, Any], field: str) -> Mask:
    text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if v is None:
        return ~present(col)
    numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
    if numeric and not (modifier.startswith("bits") and not pa.types.is_integer(col.type)):
        found = _numeric_test(*_numbers(col, cache, field), modifier, v)
        if found is not None:
            return found
    if text and modifier in TEXT_KERNELS:
        return _text_test(col, modifier, str(v), cache, field)
    if modifier in ("equals", "in"):
        return true_mask(pc.equal(col, pa.scalar(v).cast(col.type) if not isinstance(v, bool) else v))
    if modifier == "contains":
        return true_mask(pc.match_substring(col, str(v), ignore_case=True))
    if modifier == "startswith":
        return true_mask(pc.starts_with(col, str(v), ignore_case=True))
    if modifier == "endswith":
        return true_mask(pc.ends_with(col, str(v), ignore_case=True))
    if modifier == "re":
        return true_mask(pc.match_substring_regex(col, str(v)))
    if modifier in ("gt", "gte", "lt", "lte"):
        op = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}[modifier]
        return true_mask(op(col, v))
    if modifier in ("bits_all", "bits_any", "bits_none"):
        anded = pc.bit_wise_and(col, pa.scalar(int(v)).cast(col.type))
        if modifier == "bits_all":
            return true_mask(pc.equal(anded, pa.scalar(int(v)).cast(col.type)))
        if modifier == "bits_any":
            return true_mask(pc.not_equal(anded, 0))
        return true_mask(pc.equal(anded, 0))
    raise ValueError(f"unknown modifier {modifier}")


#: the text tests, on a string column's values (text comparisons ignore case, as Sigma's do)
TEXT_KERNELS: dict[str, Callable[[pa.Array, str], pa.Array]] = {
    "equals": lambda values, v: pc.equal(values, v.lower()),  # on the lowered values
    "in": lambda values, v: pc.equal(values, v.lower()),
    "contains": lambda values, v: pc.match_substring(values, v, ignore_case=True),
    "startswith": lambda values, v: pc.starts_with(values, v, ignore_case=True),
    "endswith": lambda values, v: pc.ends_with(values, v, ignore_case=True),
    "re": pc.match_substring_regex,
}


def _text_test(col: pa.Array | pa.ChunkedArray, modifier: str, v: str, cache: dict[str, Any], field: str) -> Mask:
    """A text test on the column's present values only (see :class:`~detection.features.PresentValues`)."""
    present = PresentValues.of(col, field, cache)
    values = present.values
    if modifier in ("equals", "in"):
        key = "lower:" + field
        if key not in cache:
            cache[key] = pc.utf8_lower(values)
        values = cache[key]
    return present.mask(TEXT_KERNELS[modifier](values, v))


def address_halves(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 of an address column (IPv4 as IPv4-mapped IPv6); null -> (0, 0)."""
    if pa.types.is_fixed_size_binary(col.type):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        halves = binary_ip_halves(col, None) if len(col) else np.zeros((0, 2), dtype=np.uint64)
        return halves[:, 0], halves[:, 1]
    uniques = pc.unique(col)
    table = np.zeros((len(uniques) + 1, 2), dtype=np.uint64)
    text = pc.fill_null(uniques, "")
    v6 = np.asarray(pc.match_substring(text, ":").to_numpy(zero_copy_only=False), dtype=bool)
    v4 = ~v6 & (np.asarray(pc.utf8_length(text).to_numpy(zero_copy_only=False)) > 0)
    parts = pc.split_pattern(text.filter(pa.array(v4)), ".") if v4.any() else None
    if parts is not None and len(parts.flatten()) != 4 * len(parts):  # not all dotted quads: one by one
        v6 |= v4
    elif parts is not None:  # dotted quads, parsed in Arrow: flows and hits carry thousands of them
        quad = parts.flatten().cast(pa.uint64()).to_numpy().reshape(-1, 4)
        table[np.flatnonzero(v4), 1] = ((quad[:, 0] << np.uint64(24)) | (quad[:, 1] << np.uint64(16))
                                        | (quad[:, 2] << np.uint64(8)) | quad[:, 3]) | np.uint64(0xFFFF << 32)
    for i in np.flatnonzero(v6).tolist():  # few
        v = _as_int(ipaddress.ip_address(text[i].as_py()))
        table[i] = (v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF)
    idx = np.asarray(pc.fill_null(pc.index_in(col, value_set=uniques), len(uniques)).to_numpy(zero_copy_only=False))
    return table[idx, 0], table[idx, 1]


def _as_int(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)


def in_networks(col: pa.Array | pa.ChunkedArray, networks: tuple[str, ...] | list[str]) -> Mask:
    """Which addresses of ``col`` lie in any of ``networks`` (CIDR text): the rules' ``cidr`` test."""
    if not networks:
        return np.zeros(len(col), dtype=bool)
    return _address_test(col, Condition("", "cidr", tuple(networks)), {})


def _address_test(col: pa.Array | pa.ChunkedArray, c: Condition, cache: dict[str, Any]) -> Mask:
    key = "addr:" + c.field
    if key not in cache:
        cache[key] = address_halves(col)
    hi, lo = cache[key]
    valid = present(col)
    out = np.zeros(len(hi), dtype=bool)
    for v in c.values:
        if v is None:
            out |= ~valid
            continue
        if c.modifier == "cidr":
            net = ipaddress.ip_network(str(v), strict=False)
            prefix = net.prefixlen + (96 if net.version == 4 else 0)
            base = _as_int(net.network_address)
        else:
            prefix, base = 128, _as_int(ipaddress.ip_address(str(v)))
        mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
        mhi, mlo = np.uint64(mask >> 64), np.uint64(mask & 0xFFFF_FFFF_FFFF_FFFF)
        bhi, blo = np.uint64(base >> 64), np.uint64(base & 0xFFFF_FFFF_FFFF_FFFF)
        out |= valid & ((hi & mhi) == bhi) & ((lo & mlo) == blo)
    return out
