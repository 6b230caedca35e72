"""``liaowang detect``: a detection worker in a Kafka consumer group.

Each worker subscribes to the packets topic (stage 2 of ingest/pipeline.py:
a flow table per partition) and to the flows topic (stage 3: detection per
sensor, over every partition's part of a batch, merged in batch order), so one
kind of process scales out and the group spreads both.

Exactly-once results from at-least-once delivery:

- Every part carries its sensor run and batch ``seq``; a part at or below what
  a stage has applied is a re-delivery and is skipped.  Stages are
  deterministic, so re-processing after a crash re-creates identical parts,
  flows and alerts (with the same ids; the store keeps the first copy).
- A checkpoint (every ``commit_interval_s``, and when partitions are revoked)
  publishes stage 2's output, writes stage 3's results to the store, then
  saves each partition's state in the store, and only then commits offsets.
  A partition that moves is resumed by its new owner from that state and the
  committed offset; a worker killed between checkpoints loses nothing either
  (its successor redoes the batches after the last one).
- A message that is not an intact part goes to the dead-letter topic with the
  reason in its headers, and the worker goes on.
"""

from __future__ import annotations

import collections
import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pyarrow as pa
from kafka import ConsumerRebalanceListener

from detection.engine import DetectionEngine
from detection.flows.assembler import MAX_FLOWS
from detection.trend import TrendConfig
from ingest.control import ControlPlane
from ingest.detect import DetectStage, Results, rules_fingerprint
from ingest.notify import Notifier
from ingest.pipeline import FlowPart, FlowStage, Part
from ingest.results import ControlSnapshots, PendingWrites
from ingest.store.api import Store
from ingest.stream.codec import CorruptMessage, Envelope, decode, encode
from ingest.stream.metrics import WorkerMetrics
from ingest.stream.topics import Topics, consumer_settings, ensure_topics, producer_settings

log = logging.getLogger("liaowang.detect")
S = TypeVar("S")
#: ended streams remembered per partition (late re-deliveries of them are skipped)
ENDED_KEPT = 1000


class WorkerError(Exception):
    """The worker cannot go on safely (its output was not delivered): exit, and let the group recover."""


@dataclass
class PartitionState(Generic[S]):
    """One partition's state: per sensor run, a stage-2 flow table or a stage-3 detection stream;
    and the runs that ended (late re-deliveries of them are skipped)."""

    streams: dict[str, S] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)

    def end(self, key: str, seq: int) -> None:
        self.streams.pop(key, None)
        self.ended[key] = seq
        while len(self.ended) > ENDED_KEPT:
            self.ended.pop(next(iter(self.ended)))


@dataclass
class DetectStream:
    """Stage 3 state of one sensor run, and the parts waiting for the rest of their batch."""

    stage: DetectStage
    partitions: int
    buffers: dict[int, collections.deque[tuple[int, FlowPart]]] = field(default_factory=dict)
    last_buffered: dict[int, int] = field(default_factory=dict)
    snapshots: ControlSnapshots = field(default_factory=ControlSnapshots)

    def __getstate__(self) -> dict[str, Any]:  # parts waiting are re-read from the committed offset
        return {"stage": self.stage, "partitions": self.partitions}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


FlowPartition = PartitionState[FlowStage]
DetectPartition = PartitionState[DetectStream]


class Worker:
    def __init__(self, bootstrap: str, group: str, store: Store, topics: Topics,
                 engine: Callable[[], DetectionEngine], *, idle_timeout_s: float = 120.0,
                 active_timeout_s: float = 1800.0, commit_interval_s: float = 1.0,
                 metrics: WorkerMetrics | None = None, name: str | None = None, max_flows: int = MAX_FLOWS,
                 notifier: Notifier | None = None, trend: TrendConfig | None = None) -> None:
        self.bootstrap, self.group, self.store, self.topics = bootstrap, group, store, topics
        self.trend = trend
        self.new_engine = engine
        self.fingerprint = rules_fingerprint(engine())
        self.idle_timeout_s, self.active_timeout_s = idle_timeout_s, active_timeout_s
        self.max_flows = max_flows
        self.commit_interval_s = commit_interval_s
        self.metrics = metrics or WorkerMetrics()
        self.name = name or socket.gethostname()
        self.stop = threading.Event()
        self.flow_parts: dict[int, FlowPartition] = {}
        self.detect_parts: dict[int, DetectPartition] = {}
        self.position: dict[tuple[str, int], int] = {}  # next offset to commit, per (topic, partition)
        self.committed: dict[tuple[str, int], int] = {}
        self.dirty: set[tuple[str, int]] = set()
        self.pending = PendingWrites()
        self.notifier = notifier  # offered the results of the streams this worker detects
        self._notify_version = -1  # the notification settings' version last stored
        self._sent: list[Any] = []  # kafka-python's send futures
        self._warned: set[str] = set()
        self._rewound: set[tuple[str, int, int, str, int]] = set()
        self.consumer: Any = None
        self.producer: Any = None

    # -- main loop --
    def run(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        while not self.stop.is_set():
            try:
                ensure_topics(self.bootstrap, self.topics)
                break
            except Exception as e:
                log.warning("broker %s unavailable (%s): retrying", self.bootstrap, e)
                self.stop.wait(2.0)
        self.producer = KafkaProducer(**producer_settings(self.bootstrap))
        self.consumer = KafkaConsumer(**consumer_settings(self.bootstrap, self.group))
        self.consumer.subscribe([self.topics.packets, self.topics.flows], listener=_Listener(self))
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                records = self.consumer.poll(timeout_ms=20 if self.pending else 200)  # results wait briefly
                for tp, messages in records.items():
                    for m in messages:
                        if not self._handle(tp.topic, tp.partition, m):
                            break  # read again from the start: the rest of this fetch comes again
                if self.dirty and time.monotonic() - last >= self.commit_interval_s:
                    self.checkpoint()
                    last = time.monotonic()
                elif self.pending and not records:  # caught up: results go to the store now, not at the
                    self.store_results()             # next checkpoint (the store keeps the first copy)
            self.checkpoint()
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close()
            if self.notifier is not None:  # queued deliveries get their few seconds; the record is stored
                self.notifier.close()
                self.store.write("notifications", self.notifier.drain())

    def _handle(self, topic: str, partition: int, m: Any) -> bool:
        """False when the partition was rewound (the message will come again)."""
        key = (topic, partition)
        try:
            env = decode(m.value)
            kind_ok = isinstance(env.part, Part) == (topic == self.topics.packets)
            if not kind_ok:
                raise CorruptMessage(f"a {type(env.part).__name__} on topic {topic}")
        except CorruptMessage as e:
            self._dead_letter(topic, partition, m, str(e))
        else:
            log.debug("%s[%d]@%d: %s batch %d part %d", topic, partition, m.offset, env.stream, env.part.seq,
                      env.part.partition)
            if self._lost(topic, partition, env):
                return False
            if topic == self.topics.packets:
                self._flows(partition, env)
            else:
                self._detect(partition, env, m.offset)
        self.metrics.messages.labels(topic).inc()
        self.position[key] = m.offset + 1
        self.dirty.add(key)
        return True

    def _lost(self, topic: str, partition: int, env: Envelope) -> bool:
        """Whether parts before this one never came (the sensor names the batch it published before).

        Kafka does not lose acknowledged messages; a broker that restarts without its
        data does (the test broker), and its log starts again at offset 0 while this
        consumer's position is further on.  Then the partition is read again from the
        start, once per gap (duplicates are skipped); a gap that stays is reported."""
        part = env.part
        if part.prev is None:
            return False
        if topic == self.topics.packets:
            stage = self.flow_parts.get(partition, FlowPartition()).streams.get(env.stream)
            have = -1 if stage is None else stage.seq
        else:
            st = self.detect_parts.get(partition, DetectPartition()).streams.get(env.stream)
            have = -1 if st is None else max(st.stage.seq, st.last_buffered.get(part.partition, -1))
        if have < 0 or part.prev <= have:  # a new stream, or nothing missing
            return False
        gap = (topic, partition, part.partition, env.stream, part.prev)
        if gap in self._rewound:
            log.error("%s[%d]: batches %d..%d of %s never came: lost by the broker", topic, partition, have + 1,
                      part.prev, env.stream)
            return False
        self._rewound.add(gap)
        log.warning("%s[%d]: batches %d..%d of %s are missing (the broker lost messages?): reading the partition "
                    "again from its start", topic, partition, have + 1, part.prev, env.stream)
        from kafka.structs import TopicPartition

        self.consumer.seek_to_beginning(TopicPartition(topic, partition))
        return True

    def _dead_letter(self, topic: str, partition: int, m: Any, reason: str) -> None:
        log.error("dead-letter: %s[%d] offset %d: %s", topic, partition, m.offset, reason)
        self.metrics.dead_letters.inc()
        headers = [("liaowang.error", reason.encode()), ("liaowang.topic", topic.encode()),
                   ("liaowang.partition", str(partition).encode()), ("liaowang.offset", str(m.offset).encode())]
        self._sent.append(self.producer.send(self.topics.dead_letter, value=m.value or b"", key=m.key,
                                             headers=headers))

    # -- stage 2: packets -> flows --
    def _flows(self, partition: int, env: Envelope) -> None:
        state = self.flow_parts.setdefault(partition, FlowPartition())
        part = env.part
        assert isinstance(part, Part)
        stage = state.streams.get(env.stream)
        if stage is None:
            if env.stream in state.ended:
                self.metrics.duplicates.inc()
                return
            # a new run of this sensor: the previous run will never end by itself
            for old_key in [k for k in state.streams if k.split("/", 1)[0] == env.sensor]:
                old = state.streams.pop(old_key)
                log.warning("sensor %s restarted: closing the flows of its run %s", env.sensor, old_key)
                end = Part(seq=old.seq + 1, partition=partition, partitions=part.partitions, end=True)
                self._forward(Envelope(env.sensor, old_key.split("/", 1)[1], old.update(end), env.rules))
                state.end(old_key, end.seq)
            stage = state.streams[env.stream] = FlowStage(self.idle_timeout_s, self.active_timeout_s,
                                                                    self.max_flows)
        if part.seq <= stage.seq:
            self.metrics.duplicates.inc()
            return
        if part.keyed is not None:
            self.metrics.packets.inc(part.keyed.num_rows)
        out = stage.update(part)
        self._forward(Envelope(env.sensor, env.run, out, env.rules))
        if out.end:
            state.end(env.stream, out.seq)

    def _forward(self, env: Envelope) -> None:
        self._sent.append(self.producer.send(self.topics.flows, value=encode(env), key=env.stream.encode(),
                                             partition=0))

    # -- stage 3: flows of every partition -> alerts, in the store --
    def _detect(self, partition: int, env: Envelope, offset: int) -> None:
        state = self.detect_parts.setdefault(partition, DetectPartition())
        part = env.part
        assert isinstance(part, FlowPart)
        if env.stream in state.ended:
            self.metrics.duplicates.inc()
            return
        st = state.streams.get(env.stream)
        if st is None:
            control = ControlPlane()
            st = state.streams[env.stream] = DetectStream(DetectStage(self.new_engine(), control, self.trend),
                                                                 part.partitions)
        if part.seq <= st.stage.seq or part.seq <= st.last_buffered.get(part.partition, -1):
            self.metrics.duplicates.inc()
            return
        if env.rules != self.fingerprint and (part.hits is not None or part.rows is not None):
            if env.stream not in self._warned:
                self._warned.add(env.stream)
                log.error("sensor %s selects packet hits with other rules than this worker (fingerprint %s, "
                          "here %s): its packet-rule hits are ignored; give both the same --rules",
                          env.sensor, env.rules, self.fingerprint)
            part.hits = part.rows = None
        st.buffers.setdefault(part.partition, collections.deque()).append((offset, part))
        st.last_buffered[part.partition] = part.seq
        self._drain(state, env, st)

    def _drain(self, state: DetectPartition, env: Envelope, st: DetectStream) -> None:
        """Run every batch whose parts are all here (a partition whose next part is later has none)."""
        while len(st.buffers) == st.partitions and all(st.buffers.values()):
            seq = min(b[0][1].seq for b in st.buffers.values())
            parts = [b.popleft()[1] for b in st.buffers.values() if b[0][1].seq == seq]
            results = st.stage.update(parts)
            self._results(env, st, results)
            if st.stage.ended:
                state.end(env.stream, seq)
                log.info("sensor %s run %s: input ended at batch %d", env.sensor, env.run, seq)
                return

    def _results(self, env: Envelope, st: DetectStream, r: Results) -> None:
        self.pending.add_results(env.sensor, r, st.snapshots.due(st.stage.control, st.stage.ended))
        if self.notifier is not None:
            self.notifier.offer(pa.concat_tables([r.warnings, r.alerts]), r.incidents, r.trend_warnings)
        self.metrics.flows.inc(r.flows.num_rows)
        self.metrics.alerts.inc(r.alerts.num_rows)

    # -- checkpoints --
    def checkpoint(self, commit: bool = True) -> None:
        """Outputs delivered, results stored, state saved; then offsets committed (``commit``).

        Inside a rebalance callback kafka-python cannot commit; the saved state is
        then ahead of the committed offsets, which is safe: the next owner skips
        the parts it re-reads up to the state's batch."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        phase = _Phases(self.metrics.checkpoint_seconds)
        self.producer.flush()
        failed = [f for f in self._sent if f.failed()]
        self._sent = []
        if failed:
            raise WorkerError(f"could not deliver {len(failed)} parts to {self.bootstrap}: {failed[0].exception}")
        read_at = list(self.pending.read_at)
        if self.notifier is not None:
            self.pending.add("notifications", self.notifier.drain())
            if self.notifier.settings_version != self._notify_version:
                self._notify_version = self.notifier.settings_version
                self.pending.add("notify_routes", self.notifier.settings())
        phase.done("deliver")
        self.store_results(read_at)
        phase.done("store")
        offsets = {}
        for topic, partition in sorted(self.dirty):
            if (topic, partition) not in self.position:
                continue
            state: PartitionState[Any] | None = (
                self.flow_parts.get(partition) if topic == self.topics.packets else self.detect_parts.get(partition))
            if state is not None:
                self.store.put_state(self._state_key(topic, partition), pickle.dumps(state, protocol=5))
            offset = self.position[(topic, partition)]
            if topic == self.topics.flows and state is not None:  # parts still waiting for their batch are read again
                waiting = [b[0][0] for st in state.streams.values() for b in st.buffers.values() if b]
                offset = min([offset, *waiting])
            offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, "", -1)
        phase.done("state")
        try:
            if not commit:
                raise RuntimeError("inside a rebalance")
            self.consumer.commit(offsets)
        except Exception as e:  # a rebalance or a broker restart: the state is saved, the next commit covers it
            if commit:
                log.warning("offset commit failed (%s): will retry", e)
        else:
            for tp, om in offsets.items():
                self.committed[(tp.topic, tp.partition)] = om.offset
            self.dirty.clear()
        phase.done("commit")
        log.debug("checkpoint: %s", phase)
        for (topic, partition), pos in self.position.items():
            self.metrics.lag.labels(topic, str(partition)).set(pos - self.committed.get((topic, partition), 0))
        self.metrics.checkpoints.inc()

    def store_results(self, read_at: list[float] | None = None) -> None:
        """The results detected so far into the store (their batches' latency observed)."""
        read_at = list(self.pending.read_at) if read_at is None else read_at
        self.pending.write(self.store)
        now = time.time()
        for t in read_at:
            if t:
                self.metrics.latency.observe(max(now - t, 0.0))
        if read_at:
            log.debug("stored the results of %d batches, %s s after the sensor had them", len(read_at),
                      " ".join(f"{now - t:.2f}" for t in read_at if t))

    def _state_key(self, topic: str, partition: int) -> str:
        return f"stream/{self.group}/{topic}/{partition}"

    def assigned(self, partitions: list[Any]) -> None:
        for tp in partitions:
            blob = self.store.get_state(self._state_key(tp.topic, tp.partition))
            state = pickle.loads(blob) if blob else None
            if tp.topic == self.topics.packets:
                self.flow_parts[tp.partition] = state or FlowPartition()
            else:
                self.detect_parts[tp.partition] = state or DetectPartition()
        for topic in (self.topics.packets, self.topics.flows):
            self.metrics.partitions.labels(topic).set(sum(tp.topic == topic for tp in partitions))
        log.info("%s: assigned %s", self.name, ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing")

    def revoked(self, partitions: list[Any]) -> None:
        if self.dirty or self.pending:
            self.checkpoint(commit=False)
        for tp in partitions:
            (self.flow_parts if tp.topic == self.topics.packets else self.detect_parts).pop(tp.partition, None)
            self.position.pop((tp.topic, tp.partition), None)
            self.dirty.discard((tp.topic, tp.partition))


class _Phases:
    """Times the phases of a checkpoint into a histogram (and for the debug log)."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self.histogram.labels(phase).observe(now - self._last)
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.seconds.items())


class _Listener(ConsumerRebalanceListener):
    """kafka-python's rebalance callbacks, run inside ``poll``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[Any]) -> None:
        self.worker.revoked(list(revoked))

    def on_partitions_assigned(self, assigned: list[Any]) -> None:
        self.worker.assigned(list(assigned))


