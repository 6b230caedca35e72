"""Shared by the control-plane message dissectors: picking a protocol's messages
out of a packet batch, reading TLV fields, and building its ``proto.*`` table.

The header fields of every packet are decoded vectorized by the protocol
modules.  PFCP, the busiest signalling on an N3/N4 tap, has its information
elements walked for all messages of a batch at once (:func:`scan_ies`); the
rarer GTPv2-C and Diameter messages are walked one at a time (:func:`tlvs`),
which is affordable at their volumes (``bench/`` reports messages/s).  A dissector never raises on bad
input: it keeps what it decoded and says in ``error`` where it stopped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import true_mask
from sensors.protocols.packets import V4_MAPPED_LO, bounded_text, ip_strings
from sensors.protocols.sctp import data_chunks
from sensors.schema import PROTO_SCHEMAS, AppProto


@dataclass
class Messages:
    """The packets of one application protocol in a batch: header columns and payload bytes."""

    rows: np.ndarray  # packet rows in the batch
    arrays: dict[str, pa.Array]  # the PROTO_COMMON columns and packet_row, as Arrow
    payload: pa.BinaryArray
    more: pa.BinaryArray | None = None  # ``cp_more``: SCTP DATA chunks bundled after the first

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def payloads(self) -> list[bytes]:
        return self.payload.to_pylist()

    def every_payload(self, ppids: tuple[int, ...]) -> list[tuple[int, bytes]]:
        """(message index, payload) of each message, and after it the messages bundled in the same SCTP
        packet whose payload protocol is one of ``ppids``: several NGAP or Diameter messages per packet."""
        more = self.more.to_pylist() if self.more is not None and self.more.null_count < len(self.more) else None
        out = []
        for i, p in enumerate(self.payloads):
            out.append((i, p))
            if more is not None and more[i]:
                out += [(i, chunk) for chunk in data_chunks(more[i], ppids)]
        return out

    @cached_property
    def _common(self) -> list[dict[str, object]]:
        names = list(self.arrays)
        return [dict(zip(names, values)) for values in zip(*(self.arrays[k].to_pylist() for k in names))]

    def common(self, i: int) -> dict[str, object]:
        return dict(self._common[i])


#: the packet columns :func:`select` reads (besides ``packet_row``, which a subset of a batch keeps)
SELECT_COLUMNS = ("app_proto", "ts", "src_ip", "dst_ip", "src_port", "dst_port", "cp_payload", "cp_more")


def select(packets: pa.RecordBatch | pa.Table, *apps: AppProto) -> Messages:
    """The packets whose ``app_proto`` is one of ``apps`` and that carry ``cp_payload``."""
    app = packets.column("app_proto")
    mask = pc.and_(pc.is_in(app, pa.array([int(a) for a in apps], pa.uint8())),
                   packets.column("cp_payload").is_valid())
    rows = np.flatnonzero(true_mask(mask))
    have = set(packets.column_names)  # a list built on every call: once
    needed = [c for c in (*SELECT_COLUMNS[1:], "packet_row") if c in have]
    sub = packets.select(needed).take(pa.array(rows))
    if "packet_row" in have:  # a subset of a batch that kept its rows' numbers
        rows = np.asarray(sub.column("packet_row").to_numpy(zero_copy_only=False), dtype=np.int64)

    def col(name: str) -> pa.Array:
        c = sub.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    def addr(name: str) -> pa.Array:
        c = col(name)
        if not len(c):
            return pa.array([], pa.string())
        raw = np.frombuffer(c.buffers()[1], dtype=">u8", count=2 * (len(c) + c.offset))
        halves = raw.reshape(-1, 2)[c.offset:].astype(np.uint64)
        return pc.if_else(c.is_valid(), ip_strings(halves), pa.scalar(None, pa.string()))

    arrays = {"ts": col("ts").cast(pa.int64()), "src_ip": addr("src_ip"), "dst_ip": addr("dst_ip"),
              "src_port": col("src_port"), "dst_port": col("dst_port"), "packet_row": pa.array(rows, pa.int64())}
    return Messages(rows=rows, arrays=arrays, payload=col("cp_payload"),
                    more=col("cp_more") if "cp_more" in needed else None)


def to_table(name: str, rows: list[dict[str, object]]) -> pa.Table:
    """The ``proto.<name>`` table of dissected messages, plus the ``packet_row`` each came from.

    ``packet_row`` (the row in the packet batch) lets the flow stage fill
    ``flow_id``; :func:`drop_packet_rows` removes it before the table is stored.
    """
    schema = _with_packet_row(name)
    ts = pa.array([r.pop("ts") for r in rows], pa.int64()).cast(schema.field("ts").type)
    table = _bounded(pa.Table.from_pylist(rows, schema=schema.remove(0)))
    return table.add_column(0, schema.field("ts"), ts)


def from_columns(name: str, msgs: Messages, columns: dict[str, pa.Array]) -> pa.Table:
    """:func:`to_table` from whole columns: ``msgs``' common ones, ``columns``, nulls for the rest."""
    schema = _with_packet_row(name)
    given = {**msgs.arrays, **columns}
    return _bounded(pa.Table.from_arrays(
        [given[f.name].cast(f.type) if f.name in given else pa.nulls(len(msgs), f.type) for f in schema],
        schema=schema))


def _bounded(table: pa.Table) -> pa.Table:
    """Every text column within the length a decoder stores (IEs, AVPs and headers can be 64 KB)."""
    for i, f in enumerate(table.schema):
        if f.type == pa.string():
            table = table.set_column(i, f, bounded_text(table.column(i)))
    return table


def _with_packet_row(name: str) -> pa.Schema:
    return PROTO_SCHEMAS[name].append(pa.field("packet_row", pa.int64()))


def drop_packet_rows(table: pa.Table) -> pa.Table:
    return table.drop_columns(["packet_row"]) if "packet_row" in table.column_names else table


def tlvs(data: bytes, start: int, end: int, header: int, length_at: int) -> Iterator[tuple[int, int, int, int]]:
    """(type, value_start, value_end, ie_start) of the 16-bit-type TLVs in ``data[start:end]``.

    ``header``: IE header bytes before the value; ``length_at``: offset of the
    16-bit length in the IE header (PFCP: type 2, length 2 -> header 4,
    length_at 2; GTPv2-C: type 1, length 2, instance 1 -> handled by the caller).
    Raises :class:`Truncated` at an IE that runs past ``end``.
    """
    pos = start
    while pos < end:
        if pos + header > end:
            raise Truncated(pos)
        ie_type = int.from_bytes(data[pos:pos + 2], "big")
        length = int.from_bytes(data[pos + length_at:pos + length_at + 2], "big")
        vstart = pos + header
        vend = vstart + length
        if vend > end:
            raise Truncated(pos)
        yield ie_type, vstart, vend, pos
        pos = vend


class Truncated(Exception):
    """An information element runs past its message: dissection stops there."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"truncated IE at byte {offset}")
        self.offset = offset


def ip_text(raw: bytes) -> str | None:
    """4 or 16 address bytes as text."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    return None


def tbcd(raw: bytes) -> str:
    """Telephony BCD digits (TS 29.274 8.3, TS 24.008 10.5.1.4): low nibble first, 0xF filler."""
    out: list[str] = []
    for b in raw:
        for nib in (b & 0x0F, b >> 4):
            if nib == 0x0F:
                return "".join(out)
            out.append("0123456789*#abc"[nib] if nib < 15 else "")
    return "".join(out)


def labels(raw: bytes) -> str:
    """A DNS-label encoded name (APN, DNN, Network Instance, FQDN Node ID); text as it is otherwise."""
    parts: list[str] = []
    pos = 0
    while pos < len(raw):
        n = raw[pos]
        if n == 0 or n > 63 or pos + 1 + n > len(raw):
            if parts:
                return ".".join(parts)
            return raw.decode("ascii", "replace").strip("\x00")
        parts.append(raw[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(parts)


@dataclass
class Ies:
    """Every information element of a batch of TLV messages, in message order, as flat arrays.

    Offsets index :attr:`buf` (the messages' payload bytes, zero-padded so
    fixed-size reads past a short value stay inside it).
    """

    buf: np.ndarray
    msg: np.ndarray  # message index of each IE
    type: np.ndarray
    v0: np.ndarray  # value start
    v1: np.ndarray  # value end
    parent: np.ndarray  # index of the enclosing grouped IE, -1 at the top level
    depth: np.ndarray
    error_at: np.ndarray  # per message: buf offset of the IE that runs past its group or message, -1 if none

    @property
    def length(self) -> np.ndarray:
        return self.v1 - self.v0

    def u8(self, off: np.ndarray) -> np.ndarray:
        return self.buf[off].astype(np.int64)

    def uint(self, off: np.ndarray, nbytes: int) -> np.ndarray:
        return be_uint(self.buf, off, nbytes)

    def first(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(messages, IE indices) of the first IE in ``mask`` of each message that has one."""
        idx = np.flatnonzero(mask)
        msgs, at = np.unique(self.msg[idx], return_index=True)
        return msgs, idx[at]


def be_uint(buf: np.ndarray, off: np.ndarray, nbytes: int) -> np.ndarray:
    """Big-endian unsigned integers of ``nbytes`` (1 to 8) at each offset of ``buf``."""
    out = np.zeros(len(off), dtype=np.uint64)
    for k in range(nbytes):
        out = (out << np.uint64(8)) | buf[off + k].astype(np.uint64)
    return out


def payload_buffer(payload: pa.BinaryArray, pad: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, start, end) of each value of a binary array, the bytes zero-padded by ``pad``."""
    n = len(payload)
    if n == 0:
        return np.zeros(pad, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    offsets = np.frombuffer(payload.buffers()[1], dtype=np.int32, count=payload.offset + n + 1)[payload.offset:]
    data = payload.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    buf = np.zeros(int(offsets[-1]) + pad, dtype=np.uint8)
    buf[:offsets[-1] - offsets[0]] = raw[offsets[0]:offsets[-1]]
    base = offsets.astype(np.int64) - int(offsets[0])
    return buf, base[:-1], base[1:]


def scan_ies(buf: np.ndarray, start: np.ndarray, end: np.ndarray, *, type_bytes: int, header: int,
             grouped: np.ndarray, max_depth: int = 8) -> Ies:
    """Walk the TLVs of every message in ``buf[start:end]`` at once (vectorized across messages).

    IEs are ``type`` (``type_bytes`` big-endian), then a 16-bit length of the
    value, then the rest of a ``header``-byte header.  A grouped IE's value is
    a sequence of IEs, so one linear pass that steps *into* groups instead of
    over them visits every IE; a stack of group ends per message gives each IE
    its parent.  The loop runs once per IE position, not once per IE.
    """
    n = len(start)
    cur = start.astype(np.int64).copy()
    ends = np.zeros((n, max_depth + 1), dtype=np.int64)
    ends[:, 0] = end
    ids = np.full((n, max_depth + 1), -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    error_at = np.full(n, -1, dtype=np.int64)
    limit = len(buf) - header
    parts: list[tuple[np.ndarray, ...]] = []
    count = 0
    m = np.flatnonzero(cur < end)
    while len(m):
        c, d = cur[m], depth[m]
        for _ in range(max_depth):  # leave the groups that ended here
            done = (d > 0) & (c >= ends[m, d])
            if not done.any():
                break
            d = d - done
        depth[m] = d
        lim = ends[m, d]
        go = c < lim
        m, c, d, lim = m[go], c[go], d[go], lim[go]
        at = np.minimum(c, limit)
        ie_type = buf[at].astype(np.int64)
        if type_bytes == 2:
            ie_type = (ie_type << 8) | buf[at + 1]
        length = (buf[at + type_bytes].astype(np.int64) << 8) | buf[at + type_bytes + 1]
        v0 = c + header
        v1 = v0 + length
        bad = v1 > lim
        error_at[m[bad]] = c[bad]
        ok = ~bad
        m, d, ie_type, v0, v1 = m[ok], d[ok], ie_type[ok], v0[ok], v1[ok]
        idx = np.arange(count, count + len(m))
        count += len(m)
        parts.append((m, ie_type, v0, v1, ids[m, d], d))
        into = np.isin(ie_type, grouped) & (d < max_depth)
        g, gd = m[into], d[into] + 1
        ends[g, gd] = v1[into]
        ids[g, gd] = idx[into]
        depth[g] = gd
        cur[m] = np.where(into, v0, v1)
    if not parts:
        e = np.zeros(0, np.int64)
        return Ies(buf, e, e, e, e, e, e, error_at)
    msg, ie_type, v0, v1, parent, d = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((v0, msg))  # message order, then position in the message
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    parent = parent[order]
    parent = np.where(parent >= 0, rank[np.maximum(parent, 0)], -1)
    return Ies(buf, msg[order], ie_type[order], v0[order], v1[order], parent, d[order], error_at)


def first_unique(msg: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each (``msg``, ``keys``) value, order kept (``dict.fromkeys``)."""
    if not len(msg):
        return np.zeros(0, dtype=bool)
    pos = np.arange(len(msg))
    order = np.lexsort((pos, *reversed(keys), msg))
    same = np.ones(len(msg) - 1, dtype=bool)
    for k in (msg, *keys):
        s = k[order]
        same &= s[1:] == s[:-1]
    keep = np.ones(len(msg), dtype=bool)
    keep[order[1:][same]] = False
    return keep


def list_column(n: int, msg: np.ndarray, values: pa.Array) -> pa.Array:
    """A list column of ``n`` rows: row ``msg[i]`` gets ``values[i]`` (``msg`` ascending)."""
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(msg, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def addresses(ies: Ies, off: np.ndarray, v6: np.ndarray) -> pa.Array:
    """IPv4 (4 bytes) or, where ``v6``, IPv6 (16 bytes) addresses at ``off`` as text."""
    halves = np.zeros((len(off), 2), dtype=np.uint64)
    halves[:, 1] = V4_MAPPED_LO | ies.uint(off, 4)
    if v6.any():
        halves[v6, 0] = ies.uint(off[v6], 8)
        halves[v6, 1] = ies.uint(off[v6] + 8, 8)
    return ip_strings(halves)


def texts(ies: Ies, idx: np.ndarray, decode: Callable[[bytes], str]) -> list[str]:
    """``decode`` of the values of IEs ``idx``, once per distinct value (names repeat: DNNs, FQDNs)."""
    seen: dict[bytes, str] = {}
    out = []
    for a, b in zip(ies.v0[idx].tolist(), ies.v1[idx].tolist()):
        raw = ies.buf[a:b].tobytes()
        if raw not in seen:
            seen[raw] = decode(raw)
        out.append(seen[raw])
    return out


def values(ies: Ies, idx: np.ndarray) -> pa.Array:
    """The raw values of IEs ``idx`` as a binary array."""
    length = ies.length[idx]
    offsets = np.zeros(len(idx) + 1, dtype=np.int32)
    np.cumsum(length, out=offsets[1:])
    at = np.repeat(ies.v0[idx] - offsets[:-1], length) + np.arange(int(offsets[-1]))
    return pa.BinaryArray.from_buffers(pa.binary(), len(idx), [None, pa.py_buffer(offsets),
                                                               pa.py_buffer(np.ascontiguousarray(ies.buf[at]))])
