"""The control-plane stages of a replay (or of a Kafka worker).

In the decoder processes, :func:`decode_messages` dissects the signalling
messages of a packet batch into ``proto.*`` tables (stateless: PFCP, GTP-C,
NGAP, Diameter) with subscriber identities already pseudonymised, and keeps
the HTTP/2 rows for the SBI decoder.  Where every packet passes in order,
:class:`SbiStage` decodes the SBI (HPACK is stateful).  The flow stage gives
every message its ``flow_id``; then :class:`ControlPlane` feeds the session
table and the NF inventory, and in a replay writes ``proto_<name>.parquet``,
``sessions.parquet`` and ``nf_inventory.parquet``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.inventory import INVENTORY_SCHEMA, NfInventory
from detection.sessions import CONTROL_EVENT_SCHEMA, MAX_SESSIONS, SESSION_SCHEMA, SessionTable, message_rows
from ingest.privacy import Pseudonymizer
from ingest.sinks import ParquetSink
from sensors.masks import true_mask
from sensors.protocols import diameter, gtpc, ngap, pfcp
from sensors.protocols.messages import SELECT_COLUMNS, drop_packet_rows
from sensors.protocols.sbi import SbiDecoder
from sensors.schema import PROTO_SCHEMAS, AppProto

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

#: the stateless message dissectors, run where packets are decoded
DISSECTORS: dict[str, tuple[AppProto, Callable[[pa.RecordBatch], pa.Table]]] = {
    "pfcp": (AppProto.PFCP, pfcp.messages), "gtpc": (AppProto.GTPC, gtpc.messages),
    "ngap": (AppProto.NGAP, ngap.messages), "diameter": (AppProto.DIAMETER, diameter.messages),
}
HTTP2_COLUMNS = ["ts", "src_ip", "dst_ip", "src_port", "dst_port", "app_proto", "cp_payload"]
#: every packet column :func:`decode_messages` reads
MESSAGE_COLUMNS = frozenset((*SELECT_COLUMNS, *HTTP2_COLUMNS))
PREFIX = "proto."


def decode_messages(packets: pa.RecordBatch, pseudonyms: Pseudonymizer) -> dict[str, pa.RecordBatch]:
    """Stage: packet batch -> ``proto.<name>`` batches (with ``packet_row``) and the ``http2`` rows."""
    payload = packets.column("cp_payload")
    if payload.null_count == len(payload):
        return {}
    # the protocols present: a dissector costs ~1 ms per batch even with nothing to do
    app = packets.column("app_proto")
    carried = set(pc.unique(app.filter(payload.is_valid())).to_pylist())
    out: dict[str, pa.RecordBatch] = {}
    for name, (proto, dissect) in DISSECTORS.items():
        if proto not in carried:
            continue
        table = dissect(packets)
        if table.num_rows:
            out[PREFIX + name] = _batch(pseudonyms.protect(name, table))
    if AppProto.HTTP2 not in carried:
        return out
    rows = np.flatnonzero(true_mask(pc.and_(pc.equal(app, int(AppProto.HTTP2)), payload.is_valid())))
    if len(rows):
        h2 = packets.select(HTTP2_COLUMNS).take(pa.array(rows))
        out["http2"] = h2.append_column("packet_row", pa.array(rows, pa.int64()))
    return out


def _batch(table: pa.Table) -> pa.RecordBatch:
    return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
        [], schema=table.schema)


class SbiStage:
    """Sensor side: HTTP/2 rows -> ``proto.sbi``.  HPACK state is per connection, so this runs
    where every packet passes in order, and pseudonymises like the stateless dissectors."""

    def __init__(self, pseudonyms: Pseudonymizer) -> None:
        self.pseudonyms = pseudonyms
        self.sbi = SbiDecoder()

    def tables(self, outputs: dict[str, pa.RecordBatch]) -> dict[str, pa.Table]:
        """The batch's ``proto.*`` tables, SBI included, still with ``packet_row``."""
        protos = {k[len(PREFIX):]: pa.Table.from_batches([v]) for k, v in outputs.items() if k.startswith(PREFIX)}
        if "http2" in outputs:
            sbi = self.sbi.update(outputs["http2"])
            if sbi.num_rows:
                protos["sbi"] = self.pseudonyms.protect("sbi", sbi)
        return protos


class ControlPlane:
    """Stateful half: sessions, inventory, and (with an output directory) the control-plane files."""

    def __init__(self, out_dir: Path | None = None, max_sessions: int = MAX_SESSIONS,
                 writer: Executor | None = None) -> None:
        """``writer``: a one-thread executor that writes the signalling tables' files (Parquet encodes without
        the GIL: a row group of 16,384 PFCP messages is ~15 ms); then :meth:`close_messages` and :meth:`close`
        must run on it too."""
        self.out_dir = out_dir
        self._writer = writer
        self._writes: list[Future[None]] = []
        self.sessions = SessionTable(max_sessions)
        self.inventory = NfInventory()
        # every file exists after a replay, empty when a protocol was absent (no stale file of an older run)
        self._sinks = {} if out_dir is None else {
            name: ParquetSink(out_dir / f"proto_{name}.parquet", schema) for name, schema in PROTO_SCHEMAS.items()}
        self.messages: dict[str, int] = {}
        self._evicted_sink: ParquetSink | None = None  # sessions.parquet, opened at the first eviction
        self.last_messages: dict[str, pa.Table] = {}  # the last batch's messages, as stored

    @staticmethod
    def packet_rows(protos: Mapping[str, pa.Table | pa.RecordBatch]) -> np.ndarray | None:
        """The packet rows of the messages (the tables concatenated; None: no table)."""
        if not protos:
            return None
        return np.concatenate([np.asarray(t.column("packet_row").to_numpy(zero_copy_only=False), dtype=np.int64)
                               for t in protos.values()])

    @staticmethod
    def with_flow_ids(protos: dict[str, pa.Table], flow_ids: np.ndarray) -> dict[str, pa.Table]:
        """Messages with ``flow_id`` (``flow_ids`` aligned with the tables concatenated; -1: none)."""
        start = 0
        done: dict[str, pa.Table] = {}
        for name, t in protos.items():
            ids = flow_ids[start:start + t.num_rows]
            start += t.num_rows
            done[name] = t.set_column(t.schema.get_field_index("flow_id"), "flow_id",
                                      pa.array(ids, pa.int64(), mask=ids < 0))
        return done

    def update(self, protos: dict[str, pa.Table]) -> pa.Table:
        """Messages of one batch, with their flow ids -> control events."""
        self.last_messages = {}
        if not protos:
            return CONTROL_EVENT_SCHEMA.empty_table()
        for name, t in protos.items():
            t = drop_packet_rows(t)
            self.last_messages[name] = t
            self.messages[name] = self.messages.get(name, 0) + t.num_rows
            if name in self._sinks:
                self._write(self._sinks[name], t)
        messages = message_rows(self.last_messages)
        self.inventory.update(messages)
        events = self.sessions.update(messages)
        if self.sessions.evicted:  # the file keeps the sessions the limit forgot (the store has their snapshots)
            evicted = self.sessions.take_evicted()
            if self.out_dir is not None and evicted.num_rows:
                if self._evicted_sink is None:
                    self._evicted_sink = ParquetSink(self.out_dir / "sessions.parquet", SESSION_SCHEMA)
                self._evicted_sink.write(evicted)
        return events

    def _write(self, sink: ParquetSink, table: pa.Table) -> None:
        if self._writer is None:
            sink.write(table)
            return
        while self._writes and self._writes[0].done():
            self._writes.pop(0).result()  # a failed write surfaces here
        self._writes.append(self._writer.submit(sink.write, table))

    def close_messages(self) -> None:
        """Close the signalling tables' files (no more messages will come); :meth:`close` does it too."""
        for done in self._writes:  # on the writer, these are done: their errors surface here
            done.result()
        self._writes = []
        for sink in self._sinks.values():
            sink.close()
        self._sinks = {}

    def close(self) -> None:
        self.close_messages()
        if self.out_dir is None:
            return
        sessions = self._evicted_sink or ParquetSink(self.out_dir / "sessions.parquet", SESSION_SCHEMA)
        inventory = ParquetSink(self.out_dir / "nf_inventory.parquet", INVENTORY_SCHEMA)
        for sink, table in ((sessions, self.sessions.table()), (inventory, self.inventory.table())):
            sink.write(table)
            sink.close()
