"""The pipeline's stages, table -> table, the same in ``liaowang replay`` and behind Kafka.

Three stages, each where its state can live:

1. **Sensor** (one ordered process per capture point): decoding, flow keys and
   partial flows (each key's statistics in the batch), packet-rule hits, the
   packet detectors' rows and the signalling messages (``proto.*``; SBI too:
   HPACK state is per connection, and subscriber identities are pseudonymised
   before anything leaves the sensor).  The result
   of one packet batch is a :class:`Part`; :func:`split` cuts it into one part
   per partition by the flow key's hash, which is symmetric (both directions,
   both tunnel ends), so every flow is whole in one partition.
2. **Flows** (:class:`FlowStage`, state per partition): packets (merged as partial
   flows where they simply continue them) -> the flows that ended in this batch, and
   each message's ``flow_id``.
3. **Detection** (:class:`ingest.detect.DetectStage`, state per sensor): the
   flow parts of one batch, from every partition, merged in a canonical order
   -> session table, user-plane attribution, rules and detectors over time
   windows, alerts.  Aggregations span flows (a scan from one source touches
   flows in every partition) and sessions span planes (PFCP and the G-PDUs of
   one session hash to different partitions), so this stage sees every
   partition's part of a batch, in batch order.  Its input is ended flows,
   messages and rule hits: about 1-2% of the packets' volume.  A flow meter's
   stage 3 is :class:`FlowsOnlyStage`: its process never loads the detection
   modules.

Replay runs the three in one process with a single partition.  With more, the
sensor forces packet times into order for the whole batch (flows use the
running maximum of timestamps, as one flow table would) and every part carries
the batch's clock, so each partition's flow table is exactly the one-table
state restricted to its flows: the same flows end in the same batch, and the
merged stage-3 input is identical to replay's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.flows.assembler import MAX_FLOWS, FlowAssembler
from detection.flows.keys import KEY_COLUMNS, KEYED_SCHEMA, PacketKeys, keys_of, packet_keys
from detection.flows.partial import KeyedPacketsMissing, PartialFlows, partial_flows, thin
from detection.flows.planes import with_planes
from detection.flows.schema import FLOW_SCHEMA
from ingest.control import MESSAGE_COLUMNS, PREFIX, ControlPlane, SbiStage, decode_messages
from ingest.privacy import Pseudonymizer
from ingest.workers import (
    STATS_COLUMNS,
    BatchStats,
    Outputs,
    can_fork,
    default_processes,
    packet_batches,
    packet_batches_forked,
)
from sensors.capture.frames import PACKET_LATENESS_NS, FrameBatch, FrameSource
from sensors.capture.source import Damage
from sensors.decode import decode
from sensors.schema import empty_table

if TYPE_CHECKING:
    from detection.engine import DetectionEngine  # a flow meter loads no detection modules (~15 ms of its start)
    from ingest.retention import Retention  # only a live capture keeps packets: its cipher library need not load

#: a message's packet: its row in the sensor's packet batch (keyed packets carry it too)
PACKET_ROW = "packet_row"


@dataclass
class BatchInfo:
    """What the sensor knows of one packet batch (the lead partition's part carries it)."""

    source: str  # capture file or interface
    first_ts_ns: int
    last_ts_ns: int  # the detection watermark
    packets: int
    bytes: int
    decode_errors: int
    input_start: bool = False  # first batch of a new input: detection may start a new timeline
    read_at: float = 0.0  # wall time the sensor had the batch (for detection latency)
    dropped: int | None = None  # live capture: packets the kernel dropped while the batch filled (None: a file)
    evidence: str | None = None  # directory of the sensor's retained packets (None: not kept)
    #: per second of capture time with packets: [epoch second, packets, bytes] (the trend's traffic series)
    seconds: list[list[int]] = field(default_factory=list)


@dataclass
class Part:
    """One packet batch's share for one partition (stage 1 -> stage 2), or the end of a sensor's input."""

    seq: int
    partition: int = 0
    partitions: int = 1
    clock_ns: int | None = None  # time reached by the whole batch (forced order); flows expire by it
    keyed: pa.RecordBatch | pa.Table | None = None  # keyed packets (KEYED_SCHEMA), or packets
    #: their partial flows (PARTIAL_FLOW_SCHEMA), when the sensor computed them: the flow table merges these
    partial_flows: pa.RecordBatch | pa.Table | None = None
    protos: dict[str, pa.Table] = field(default_factory=dict)
    hits: pa.RecordBatch | None = None
    rows: pa.RecordBatch | None = None
    batch: BatchInfo | None = None
    end: bool = False
    prev: int | None = None  # the batch the sensor published before this one (None: seq - 1)
    #: this batch begins a new timeline (an input that starts earlier than the time reached): the clock
    #: starts again from its packets, and the flows of the old timeline end before them
    restart: bool = False
    #: the batch's every keyed packet and its partial flows, read again, when ``keyed`` holds only those the flow
    #: table was expected to need (:func:`sensor_parts` with ``flow_timeouts``); None where all are there
    reread: Callable[[], tuple[pa.RecordBatch, pa.RecordBatch]] | None = None


@dataclass
class FlowPart:
    """Stage 2 -> stage 3: one partition's ended flows and its messages with their flow ids."""

    seq: int
    partition: int = 0
    partitions: int = 1
    flows: pa.Table = field(default_factory=lambda: empty_table(FLOW_SCHEMA))
    protos: dict[str, pa.Table] = field(default_factory=dict)
    hits: pa.RecordBatch | None = None
    rows: pa.RecordBatch | None = None
    batch: BatchInfo | None = None
    end: bool = False
    prev: int | None = None
    restart: bool = False  # ``flows`` ending as ``end_of_input`` are the old timeline's (see Part.restart)


@dataclass
class FlowResults:
    """Stage 3's output for one batch of a flow meter; with detection, :class:`ingest.detect.Results` adds
    the rest."""

    flows: pa.Table = field(default_factory=lambda: empty_table(FLOW_SCHEMA))
    batch: BatchInfo | None = None


# -- stage 1, sensor side -----------------------------------------------------------------


#: the packet columns a flow meter reads (``sensor_parts`` without an engine)
FLOW_METER_COLUMNS = KEY_COLUMNS | STATS_COLUMNS | {"ts", "frame_len"}


def decoded_columns(engine: DetectionEngine | None) -> frozenset[str]:
    """The packet columns the sensor stage reads: a flow meter's (``engine`` None), and with detection also the
    signalling messages' and the engine's (a replay with all rules reads 52 of 85; the work that only the others
    need, ~20% of decoding, is skipped)."""
    if engine is None:
        return FLOW_METER_COLUMNS
    return FLOW_METER_COLUMNS | MESSAGE_COLUMNS | engine.packet_columns


def sensor_parts(source: FrameSource, engine: DetectionEngine | None, pseudonyms: Pseudonymizer, *,
                 processes: int | None = None, damages: list[Damage] | None = None, first_seq: int = 0,
                 in_flight: int | None = None, retention: Retention | None = None,
                 flow_timeouts: tuple[float, float] | None = None
                 ) -> Iterator[tuple[Part, BatchStats]]:
    """Capture files (in time order) or a live interface -> one part per packet batch, with its traffic counters.

    Decoding and every stateless stage after it run in forked processes when
    ``processes`` > 1 (the default on a fork-capable machine with 2+ cores); they
    start at this call, so the caller's own setup overlaps their first batches.
    Batches are named in sensor_stats by ``source.label`` (the file, or the
    interface).  ``in_flight``: batches a live capture may have waiting for decoders.
    ``retention``: keeps every frame (in the decoders), for the console's flow downloads.
    ``engine`` None: a flow meter's decoding (see :class:`FlowsOnlyStage`): no payload inspection, signalling
    messages or rules.
    ``flow_timeouts``: the (idle, active) timeouts, s, of the one flow table this process feeds: then the
    decoders of plain pcap files send only the keyed packets it may need (:func:`detection.flows.partial.thin`),
    and a part it needs more of reads its batch again (``Part.reread``).
    """
    damages = [] if damages is None else damages

    def flow_tables(packets: pa.RecordBatch) -> tuple[PacketKeys, PartialFlows]:
        keys = packet_keys(packets)
        return keys, partial_flows(keys, community_ids=engine is not None)

    def stage(packets: pa.RecordBatch, thin_keyed: bool = False) -> dict[str, pa.RecordBatch]:
        """What the decoders do after decoding: flow keys and partial flows, packet-rule hits, detector rows,
        messages."""
        packets = pseudonyms.scrub_packets(packets)  # identities in wire text never leave the sensor
        keys, partials = flow_tables(packets)
        out = {"seconds": per_second(packets)}
        if engine is not None:
            if engine.has_packet_rules:
                out["hits"] = engine.packet_hits(packets)
            if engine.has_packet_detectors:
                out["rows"] = engine.packet_rows(packets)
            out.update(decode_messages(packets, pseudonyms))
        if thin_keyed:
            assert flow_timeouts is not None
            idle_ms, active_ms = (int(t * 1000) for t in flow_timeouts)
            message_rows = ControlPlane.packet_rows(
                {name: b for name, b in out.items() if name.startswith(PREFIX) or name == "http2"})
            keys, partials = thin(keys, partials, idle_ms, active_ms,
                                  np.empty(0, dtype=np.int64) if message_rows is None else message_rows)
        out["keyed"], out["partial_flows"] = keys.to_arrow(), partials.to_arrow()
        return out

    processes = default_processes() if processes is None else processes
    # the decoders fill only the columns keying, the traffic counters, per_second and detection read
    decoder = functools.partial(decode, columns=decoded_columns(engine))
    if processes >= 2 and can_fork():
        batches = packet_batches_forked(source, damages, stage, decoders=processes - 1, in_flight=in_flight,
                                        keep=retention, decoder=decoder, chunk_transform=None if flow_timeouts is None
                                        else functools.partial(stage, thin_keyed=True))
    else:
        batches = packet_batches(source, damages, stage, keep=retention, decoder=decoder)
    return _parts(source, batches, flow_tables, decoder, pseudonyms, first_seq, retention)


def _parts(source: FrameSource, batches: Iterator[tuple[Outputs, BatchStats]],
           flow_tables: Callable[[pa.RecordBatch], tuple[PacketKeys, PartialFlows]],
           decoder: Callable[[FrameBatch], pa.RecordBatch], pseudonyms: Pseudonymizer, first_seq: int,
           retention: Retention | None) -> Iterator[tuple[Part, BatchStats]]:
    """:func:`sensor_parts`' parts, from its decoded batches."""
    evidence = retention.directory if retention is not None else None
    sbi = SbiStage(pseudonyms)
    file_index = 0
    for seq, (outputs, stats) in enumerate(batches, start=first_seq):
        info = BatchInfo(
            source=source.label(stats.file_index), first_ts_ns=stats.first_ts_ns or 0,
            last_ts_ns=stats.last_ts_ns or 0, packets=stats.packets, bytes=stats.bytes,
            decode_errors=stats.packets - stats.decode_status.get(0, 0), input_start=stats.file_index != file_index,
            read_at=time.time(), dropped=stats.dropped if source.live else None, evidence=evidence,
            seconds=[list(r) for r in zip(*(outputs["seconds"].column(i).to_pylist() for i in range(3)))])
        file_index = stats.file_index
        reread = None
        if stats.reread is not None:
            def reread(frames: Callable[[], FrameBatch] = stats.reread) -> tuple[pa.RecordBatch, pa.RecordBatch]:
                keys, partials = flow_tables(pseudonyms.scrub_packets(decoder(frames())))
                return keys.to_arrow(), partials.to_arrow()
        yield Part(seq=seq, keyed=outputs["keyed"], partial_flows=outputs["partial_flows"], protos=sbi.tables(outputs),
                   hits=outputs.get("hits"), rows=outputs.get("rows"), batch=info, reread=reread), stats


def per_second(packets: pa.RecordBatch) -> pa.RecordBatch:
    """Packets and bytes per second of capture time (seconds with none are left out)."""
    seconds = packets.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False) // 1_000_000_000
    lengths = packets.column("frame_len").to_numpy(zero_copy_only=False)
    first = int(seconds.min()) if len(seconds) else 0
    if len(seconds) and int(seconds.max()) - first <= len(seconds):  # the usual batch: a dense span, no sort needed
        index = seconds - first
        packet_counts = np.bincount(index)
        keys = np.flatnonzero(packet_counts)
        byte_counts = np.bincount(index, weights=lengths)[keys]
        keys, packet_counts = keys + first, packet_counts[keys]
    else:  # seconds far apart (a sparse capture): only those with packets
        keys, index = np.unique(seconds, return_inverse=True)
        packet_counts = np.bincount(index, minlength=len(keys))
        byte_counts = np.bincount(index, weights=lengths, minlength=len(keys))
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.int64()), pa.array(packet_counts.astype(np.int64)),
         pa.array(byte_counts.astype(np.int64))], names=["second", "packets", "bytes"])


def starts_new_timeline(batch: BatchInfo | None, clock_ns: int | None) -> bool:
    """Does this batch begin an input that starts earlier than the time reached (unrelated captures replayed
    together, overlapping in time)?  Then it gets a timeline of its own rather than having its packets'
    times forced up to the other input's: flows, alerts and evidence keep the times the packets carry."""
    return (batch is not None and batch.input_start and clock_ns is not None
            and batch.first_ts_ns < clock_ns - PACKET_LATENESS_NS)


def split(part: Part, partitions: int, clock_ns: int | None) -> tuple[list[Part], int | None]:
    """One batch (``keyed``: its keyed packets, or its packets) -> one part per partition, and the clock reached.

    ``clock_ns``: the time the previous batches reached (None at the start).
    Hits, detector rows and batch info ride with the lead partition (``seq`` mod
    ``partitions``); messages go with their packet's flow.
    """
    assert part.keyed is not None
    k = keys_of(part.keyed)
    lead = part.seq % partitions
    restart = starts_new_timeline(part.batch, clock_ns)
    if restart:
        clock_ns = None
    # partial flows hold the batch's own forced time order: of no use if an earlier batch reached a later time
    partials = part.partial_flows if clock_ns is None or not len(k.rows) or k.ts_ns[0] >= clock_ns else None
    if len(k.rows):
        start = np.iinfo(np.int64).min if clock_ns is None else clock_ns
        k.ts_ns = np.maximum.accumulate(np.maximum(k.ts_ns, start))
        clock_ns = int(k.ts_ns[-1])
    if isinstance(part.keyed, pa.RecordBatch) and part.keyed.schema.equals(KEYED_SCHEMA):  # keyed by the decoders
        keyed = part.keyed.set_column(KEYED_SCHEMA.get_field_index("ts_ns"), KEYED_SCHEMA.field("ts_ns"),
                                      pa.array(k.ts_ns, pa.int64()))
    else:
        keyed = k.to_arrow()
    which = (k.hash % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(partitions + 1))
    partials_of: list[pa.RecordBatch | None] = [None] * partitions
    if partials is not None:
        pf = PartialFlows.from_arrow(partials)
        owner = (pf["hash"] % np.uint64(partitions)).astype(np.int64)
        partials_of = [pf.take(np.flatnonzero(owner == i)).to_arrow() for i in range(partitions)]
    owner_of: dict[str, np.ndarray] = {}
    for name, t in part.protos.items():
        prow = np.asarray(t.column(PACKET_ROW).to_numpy(zero_copy_only=False), dtype=np.int64)
        pos = np.minimum(np.searchsorted(k.rows, prow), max(len(k.rows) - 1, 0))
        found = (k.rows[pos] == prow) if len(k.rows) else np.zeros(len(prow), dtype=bool)
        owner_of[name] = np.where(found, which[pos] if len(k.rows) else 0, lead)
    parts = []
    for p in range(partitions):
        protos = {}
        for name, t in part.protos.items():
            mine = np.flatnonzero(owner_of[name] == p)
            if len(mine):
                protos[name] = t.take(pa.array(mine))
        is_lead = p == lead
        parts.append(Part(seq=part.seq, partition=p, partitions=partitions, clock_ns=clock_ns, restart=restart,
                          keyed=keyed.take(pa.array(order[bounds[p]:bounds[p + 1]])), partial_flows=partials_of[p],
                          protos=protos,
                          hits=part.hits if is_lead else None, rows=part.rows if is_lead else None,
                          batch=part.batch if is_lead else None))
    return parts, clock_ns


# -- stage 2 ------------------------------------------------------------------------------


class FlowStage:
    """One partition's flow table: parts -> ended flows and flow ids for the messages."""

    def __init__(self, idle_timeout_s: float = 120.0, active_timeout_s: float = 1800.0,
                 max_flows: int = MAX_FLOWS) -> None:
        # every batch hands out the flows that ended in it: stage 3 sees the same flows at the
        # same batch however many partitions there are
        self.flows = FlowAssembler(idle_timeout_s, active_timeout_s, export_rows=1, max_flows=max_flows)
        self.seq = -1  # the last part applied

    def update(self, part: Part) -> FlowPart:
        self.seq = part.seq
        if part.end:
            return FlowPart(seq=part.seq, partition=part.partition, partitions=part.partitions,
                            flows=self.flows.flush(), end=True, prev=part.prev)
        assert part.keyed is not None
        before = self.flows.restart() if part.restart else None  # the old timeline's flows end first
        id_rows = ControlPlane.packet_rows(part.protos)  # the flows of the messages' packets (keyed rows carry them)
        try:
            ended = self.flows.update(part.keyed, id_rows, now_ns=part.clock_ns, partials=part.partial_flows)
        except KeyedPacketsMissing:  # a thin keyed table lacks what this batch needs (rare): all of them, then
            if part.reread is None:
                raise
            part.keyed, part.partial_flows = part.reread()
            ended = self.flows.update(part.keyed, id_rows, now_ns=part.clock_ns, partials=part.partial_flows)
        if before is not None and before.num_rows:
            ended = pa.concat_tables([before, ended])
        protos = ControlPlane.with_flow_ids(part.protos, self.flows.last_flow_ids)
        return FlowPart(seq=part.seq, partition=part.partition, partitions=part.partitions, flows=ended,
                        protos=protos,
                        hits=part.hits, rows=part.rows, batch=part.batch, prev=part.prev, restart=part.restart)


# -- stage 3 ------------------------------------------------------------------------------


class FlowsOnlyStage:
    """Stage 3 of a flow meter (``liaowang replay --flows-only``): the ended flows, in the order
    :class:`ingest.detect.DetectStage` gives them, with their plane; no detection, sessions or posture."""

    def update(self, parts: list[FlowPart], flows_ready: Callable[[pa.Table], None] | None = None) -> FlowResults:
        """``flows_ready``: as for :meth:`ingest.detect.DetectStage.update`."""
        old_flows, flows = ended_flows(parts)
        if old_flows is not None:  # the old timeline's flows first, as DetectStage hands them out
            flows = pa.concat_tables([old_flows, flows])
        flows = with_planes(flows)
        if flows_ready is not None:
            flows_ready(flows)
        return FlowResults(flows=flows, batch=next((p.batch for p in parts if p.batch is not None), None))


def ended_flows(parts: list[FlowPart]) -> tuple[pa.Table | None, pa.Table]:
    """The flows a batch's parts ended, in canonical order: (those of the timeline that closed, if a part
    starts a new one; the rest)."""
    flows = _canonical(pa.concat_tables([p.flows for p in parts]) if len(parts) > 1 else parts[0].flows)
    if not any(p.restart for p in parts):
        return None, flows
    ended = pc.equal(flows.column("expiration_reason"), "end_of_input")
    return flows.filter(ended), flows.filter(pc.invert(ended))


def _canonical(flows: pa.Table) -> pa.Table:
    """Ended flows in one order whatever partitions they came from (attribution follows it)."""
    if flows.num_rows < 2:
        return flows
    first = np.asarray(flows.column("first_seen").cast(pa.int64()).to_numpy())
    fid = np.asarray(flows.column("flow_id").to_numpy())
    if bool(((first[1:] > first[:-1]) | ((first[1:] == first[:-1]) & (fid[1:] >= fid[:-1]))).all()):
        return flows  # one partition's flows: the assembler hands them out in this order
    return flows.sort_by([("first_seen", "ascending"), ("flow_id", "ascending")])


__all__ = ["BatchInfo", "FlowPart", "FlowResults", "FlowStage", "FlowsOnlyStage", "Part", "decoded_columns",
           "ended_flows", "sensor_parts", "split"]
