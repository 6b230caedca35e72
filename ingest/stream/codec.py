"""Kafka message values: one pipeline part (ingest/pipeline.py) as bytes, and back.

Layout: ``LWP`` + a version byte, a 4-byte big-endian header length, a JSON
header (the part's scalar fields and the byte length of each table), then one
Arrow IPC stream per table.  Tables are compressed by Arrow (LZ4 frames per
column buffer, in C++ threads), so the producer sends them uncompressed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import pyarrow as pa

from ingest.pipeline import BatchInfo, FlowPart, Part

MAGIC = b"LWP\x01"
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
#: the tables of a part, by field; ``protos`` are stored as ``proto.<name>``
TABLE_FIELDS = ("keyed", "partial_flows", "hits", "rows", "flows")


class CorruptMessage(ValueError):
    """A message that is not a readable part (it goes to the dead-letter topic)."""


@dataclasses.dataclass
class Envelope:
    """A part and where it comes from: one sensor run (``sensor``/``run``), one batch ``seq``."""

    sensor: str
    run: str
    part: Part | FlowPart
    rules: str = ""  # fingerprint of the rule set the sensor selected packet hits with

    @property
    def stream(self) -> str:
        return f"{self.sensor}/{self.run}"


def encode(env: Envelope) -> bytes:
    part = env.part
    tables: list[tuple[str, pa.Table | pa.RecordBatch]] = []
    for name in TABLE_FIELDS:
        t = getattr(part, name, None)
        if t is not None:
            tables.append((name, t))
    tables += [(f"proto.{n}", t) for n, t in part.protos.items()]
    blobs = [_ipc(t) for _, t in tables]
    header = {
        "kind": "flows" if isinstance(part, FlowPart) else "packets",
        "sensor": env.sensor, "run": env.run, "rules": env.rules,
        "seq": part.seq, "partition": part.partition, "partitions": part.partitions, "end": part.end,
        "prev": part.prev, "restart": part.restart,
        "clock_ns": getattr(part, "clock_ns", None),
        "batch": None if part.batch is None else dataclasses.asdict(part.batch),
        "tables": [[name, len(b)] for (name, _), b in zip(tables, blobs)],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack(">I", len(head)), head, *blobs])


def decode(value: bytes | None) -> Envelope:
    """Raises :class:`CorruptMessage` for anything that is not an intact part."""
    try:
        return _decode(value or b"")
    except CorruptMessage:
        raise
    except Exception as e:  # JSON, Arrow, missing keys: all the same to the caller
        raise CorruptMessage(f"{type(e).__name__}: {e}") from e


def _decode(value: bytes) -> Envelope:
    if value[:4] != MAGIC:
        raise CorruptMessage("not a Liaowang part (bad magic)")
    (n,) = struct.unpack(">I", value[4:8])
    header: dict[str, Any] = json.loads(value[8:8 + n])
    pos = 8 + n
    tables: dict[str, pa.Table] = {}
    for name, size in header["tables"]:
        if pos + size > len(value):
            raise CorruptMessage(f"table {name} truncated")
        with pa.ipc.open_stream(pa.py_buffer(value[pos:pos + size])) as reader:
            tables[name] = reader.read_all()
        pos += size
    if pos != len(value):
        raise CorruptMessage(f"{len(value) - pos} trailing bytes")
    protos = {k[len("proto."):]: t for k, t in tables.items() if k.startswith("proto.")}
    batch = BatchInfo(**header["batch"]) if header["batch"] else None
    common: dict[str, Any] = {"seq": header["seq"], "partition": header["partition"],
                              "partitions": header["partitions"], "end": header["end"], "batch": batch,
                              "prev": header.get("prev"), "restart": header.get("restart", False),
                              "protos": protos, "hits": _batch(tables.get("hits")), "rows": _batch(tables.get("rows"))}
    part: Part | FlowPart
    if header["kind"] == "flows":
        part = FlowPart(**common, **({"flows": tables["flows"]} if "flows" in tables else {}))
    else:
        part = Part(**common, clock_ns=header["clock_ns"], keyed=tables.get("keyed"),
                    partial_flows=tables.get("partial_flows"))
    return Envelope(sensor=header["sensor"], run=header["run"], part=part, rules=header["rules"])


def _ipc(table: pa.Table | pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=IPC_OPTIONS) as w:
        w.write(table)
    return sink.getvalue().to_pybytes()


def _batch(table: pa.Table | None) -> pa.RecordBatch | None:
    if table is None:
        return None
    return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
        [], schema=table.schema)
