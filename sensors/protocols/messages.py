"""Shared by the control-plane message dissectors: picking a protocol's messages
out of a packet batch, reading TLV fields, and building its ``proto.*`` table.

The header fields of every packet are decoded vectorized by the protocol
modules; the information elements of signalling messages are walked here one
message at a time, which is affordable because signalling is a small share of
the traffic (``bench/`` reports messages/s).  A dissector never raises on bad
input: it keeps what it decoded and says in ``error`` where it stopped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.protocols.packets import ip_strings
from sensors.schema import PROTO_SCHEMAS, AppProto


@dataclass
class Messages:
    """The packets of one application protocol in a batch: header columns and payload bytes."""

    rows: np.ndarray  # packet rows in the batch
    ts: list[int]  # ns since the epoch
    src_ip: list[str | None]
    dst_ip: list[str | None]
    src_port: list[int | None]
    dst_port: list[int | None]
    payloads: list[bytes]

    def __len__(self) -> int:
        return len(self.rows)

    def common(self, i: int) -> dict[str, object]:
        return {"ts": self.ts[i], "src_ip": self.src_ip[i], "dst_ip": self.dst_ip[i],
                "src_port": self.src_port[i], "dst_port": self.dst_port[i], "packet_row": int(self.rows[i])}


def select(packets: pa.RecordBatch | pa.Table, *apps: AppProto) -> Messages:
    """The packets whose ``app_proto`` is one of ``apps`` and that carry ``cp_payload``."""
    app = packets.column("app_proto")
    mask = pc.and_(pc.is_in(app, pa.array([int(a) for a in apps], pa.uint8())),
                   packets.column("cp_payload").is_valid())
    rows = np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)))
    sub = packets.take(pa.array(rows))
    if "packet_row" in packets.column_names:  # a subset of a batch that kept its rows' numbers
        rows = np.asarray(sub.column("packet_row").to_numpy(zero_copy_only=False), dtype=np.int64)

    def addr(name: str) -> list[str | None]:
        col = sub.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if not len(col):
            return []
        raw = np.frombuffer(col.buffers()[1], dtype=">u8", count=2 * (len(col) + col.offset))
        halves = raw.reshape(-1, 2)[col.offset:].astype(np.uint64)
        return pc.if_else(col.is_valid(), ip_strings(halves), pa.scalar(None, pa.string())).to_pylist()

    return Messages(
        rows=rows,
        ts=sub.column("ts").cast(pa.int64()).to_pylist(),
        src_ip=addr("src_ip"),
        dst_ip=addr("dst_ip"),
        src_port=sub.column("src_port").to_pylist(),
        dst_port=sub.column("dst_port").to_pylist(),
        payloads=sub.column("cp_payload").to_pylist(),
    )


def to_table(name: str, rows: list[dict[str, object]]) -> pa.Table:
    """The ``proto.<name>`` table of dissected messages, plus the ``packet_row`` each came from.

    ``packet_row`` (the row in the packet batch) lets the flow stage fill
    ``flow_id``; :func:`drop_packet_rows` removes it before the table is stored.
    """
    schema = PROTO_SCHEMAS[name].append(pa.field("packet_row", pa.int64()))
    ts = pa.array([r.pop("ts") for r in rows], pa.int64()).cast(schema.field("ts").type)
    table = pa.Table.from_pylist(rows, schema=schema.remove(0))
    return table.add_column(0, schema.field("ts"), ts)


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
