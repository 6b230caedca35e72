"""``liaowang sensor``: capture -> decoded parts -> Kafka, never waiting on the broker.

The capture loop (decoding in forked processes, as in replay) splits each
batch by flow hash into one part per partition of the packets topic and hands
the batch's messages to the :class:`~ingest.stream.spool.Outbox`; a sender
thread delivers them in order, one batch at a time, and keeps a batch until
the broker has acknowledged all its parts.  When the broker is down, batches
spill to the disk spool and drain, in order, once it is back; topics are
re-created first (a broker that lost them would auto-create its own).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from detection.engine import DetectionEngine
from ingest.detect import rules_fingerprint
from ingest.pipeline import Part, sensor_parts, split
from ingest.privacy import Pseudonymizer
from ingest.retention import Retention
from ingest.stream.codec import Envelope, encode
from ingest.stream.metrics import SensorMetrics
from ingest.stream.spool import Outbox, OutboxStats
from ingest.stream.topics import Topics, ensure_topics, producer_settings
from sensors.capture.frames import FrameSource
from sensors.capture.source import DEFAULT_CHUNK_BYTES, CaptureFiles, expand_inputs, order_by_time

log = logging.getLogger("liaowang.sensor")


@dataclass
class SensorSummary:
    sensor: str
    run: str
    batches: int = 0
    packets: int = 0
    sent: int = 0
    seconds: float = 0.0
    dropped: int = 0  # live capture: packets the kernel dropped
    outbox: OutboxStats = field(default_factory=OutboxStats)  # spooled and dropped
    errors: list[str] = field(default_factory=list)


class Sensor:
    def __init__(self, bootstrap: str, topics: Topics, *, sensor_id: str, spool_dir: Path,
                 max_spool_bytes: int = 1 << 30, block_when_full: bool = True,
                 metrics: SensorMetrics | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.sensor_id = sensor_id
        self.run = uuid.uuid4().hex[:12]
        self.outbox = Outbox(spool_dir, max_spool_bytes, block=block_when_full)
        self.metrics = metrics or SensorMetrics()
        self.summary = SensorSummary(sensor=sensor_id, run=self.run, outbox=self.outbox.stats)
        self._published = -1  # the last batch handed to the outbox (parts name it: consumers see losses)
        self._sender = threading.Thread(target=self._send_loop, name="liaowang-sender", daemon=True)

    # -- capture side --
    def replay(self, inputs: list[str], engine: DetectionEngine, pseudonyms: Pseudonymizer, *,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, processes: int | None = None,
               pps: float | None = None, speed: float | None = None) -> SensorSummary:
        """Publish capture files (paced at ``pps`` packets/s or ``speed`` x capture time, else at full speed)."""
        files = order_by_time(expand_inputs(inputs))
        return self.stream(CaptureFiles(files, chunk_bytes), engine, pseudonyms, processes=processes, pps=pps,
                        speed=speed)

    def stream(self, source: FrameSource, engine: DetectionEngine, pseudonyms: Pseudonymizer, *,
               processes: int | None = None, in_flight: int | None = None, pps: float | None = None,
               speed: float | None = None, retention: Retention | None = None) -> SensorSummary:
        """Publish a frame source's batches, then the end of the input, and deliver everything
        (``retention``: keep the packets too)."""
        started = time.perf_counter()
        self._sender.start()  # it creates the topics: capture does not wait for the broker
        fingerprint = rules_fingerprint(engine)
        partitions = self.topics.packet_partitions
        clock: int | None = None
        seq, sent_packets, t0 = -1, 0, None
        self._published = -1
        for part, stats in sensor_parts(source, engine, pseudonyms, processes=processes, in_flight=in_flight,
                                          retention=retention):
            seq = part.seq
            if pps:
                _sleep_until(started + sent_packets / pps)
            elif speed and stats.last_ts_ns is not None:
                t0 = t0 if t0 is not None else stats.first_ts_ns or stats.last_ts_ns
                _sleep_until(started + (stats.last_ts_ns - t0) / 1e9 / speed)
            if part.batch is not None:
                part.batch.read_at = time.time()
            sent_packets += stats.packets
            parts, clock = split(part, partitions, clock)
            for p in parts:
                p.prev = self._published
            self.publish(seq, [Envelope(self.sensor_id, self.run, p, fingerprint) for p in parts], stats.packets)
            m = self.metrics
            m.packets.inc(stats.packets)
            m.bytes.inc(stats.bytes)
            m.decode_errors.inc(stats.packets - stats.decode_status.get(0, 0))
            self.summary.dropped += stats.dropped
            m.packets_per_second.set(sent_packets / max(time.perf_counter() - started, 1e-9))
        end = [Envelope(self.sensor_id, self.run, Part(seq=seq + 1, partition=p, partitions=partitions, end=True,
                                                       prev=self._published), fingerprint) for p in range(partitions)]
        self.publish(seq + 1, end, 0)
        self.summary.packets = sent_packets
        self.close()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def publish(self, seq: int, envelopes: list[Envelope], packets: int) -> None:
        messages = [(e.part.partition, encode(e)) for e in envelopes]
        self.summary.batches += 1
        self.metrics.batches.inc()
        if self.outbox.put(seq, messages, packets):
            self._published = seq
        else:
            self.metrics.dropped_batches.inc()
            self.metrics.dropped_packets.inc(packets)
            log.warning("spool full: dropped batch %d (%d packets)", seq, packets)
        self._gauges()

    def close(self, timeout: float | None = None) -> None:
        """Deliver everything queued or spooled, then stop the sender."""
        self.outbox.close()
        self._sender.join(timeout)

    def _gauges(self) -> None:
        s = self.outbox.stats
        self.metrics.spool_bytes.set(s.spool_bytes)
        self.metrics.spool_batches.set(s.spool_batches)
        self.metrics.queued_batches.set(s.memory_batches)

    # -- sender thread --
    def _send_loop(self) -> None:
        from kafka import KafkaProducer

        producer = None
        backoff = 0.2
        self.outbox.degraded = True  # until the broker takes a batch, batches wait on disk
        while True:
            item = self.outbox.peek(timeout=1.0)
            if item is None:
                if self.outbox.finished:
                    break
                continue
            seq, messages = item
            try:
                if producer is None:  # (again: the broker may have come back without our topics)
                    ensure_topics(self.bootstrap, self.topics)
                    producer = KafkaProducer(**producer_settings(self.bootstrap))
                key = f"{self.sensor_id}/{self.run}".encode()
                futures = [producer.send(self.topics.packets, value=v, key=key, partition=p) for p, v in messages]
                for f in futures:
                    f.get(timeout=6)
            except Exception as e:  # down, restarting, timing out: keep the batch and try again
                self.summary.errors.append(str(e))
                self.metrics.publish_errors.inc()
                self.outbox.degraded = True
                if backoff <= 0.2:
                    log.warning("cannot publish batch %d to %s (%s): spooling and retrying", seq, self.bootstrap, e)
                if producer is not None:
                    producer.close(timeout=0)
                    producer = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._gauges()
                continue
            if backoff > 0.2:
                log.warning("broker %s is back: draining the spool", self.bootstrap)
            backoff = 0.2
            self.outbox.degraded = False
            self.outbox.pop()
            self.summary.sent += 1
            self.metrics.sent.inc()
            self._gauges()
        if producer is not None:
            producer.close()


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
