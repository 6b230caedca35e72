"""Prometheus metrics of a sensor or a detection worker (``--metrics-port``; text format on /metrics)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sensors.capture.afpacket import KernelCounters


class SensorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.packets = Counter("liaowang_sensor_packets", "packets decoded", registry=r)
        self.bytes = Counter("liaowang_sensor_bytes", "frame bytes decoded", registry=r)
        self.batches = Counter("liaowang_sensor_batches", "packet batches published or queued", registry=r)
        self.sent = Counter("liaowang_sensor_sent_batches", "batches the broker acknowledged", registry=r)
        self.dropped_batches = Counter("liaowang_sensor_dropped_batches", "batches dropped: spool full", registry=r)
        self.dropped_packets = Counter("liaowang_sensor_dropped_packets", "packets dropped: spool full", registry=r)
        self.decode_errors = Counter("liaowang_sensor_decode_errors", "packets with a decode error", registry=r)
        self.publish_errors = Counter("liaowang_sensor_publish_errors", "failed sends (retried)", registry=r)
        self.spool_bytes = Gauge("liaowang_sensor_spool_bytes", "bytes waiting in the disk spool", registry=r)
        self.spool_batches = Gauge("liaowang_sensor_spool_batches", "batches waiting in the disk spool", registry=r)
        self.queued_batches = Gauge("liaowang_sensor_queued_batches", "batches waiting in memory", registry=r)
        self.packets_per_second = Gauge("liaowang_sensor_packets_per_second", "decode rate, last batch", registry=r)
        # live capture: the kernel's PACKET_STATISTICS, as the capture process last read them
        self.kernel_packets = Gauge("liaowang_sensor_kernel_packets", "packets the capture socket saw (with drops)",
                                    registry=r)
        self.kernel_drops = Gauge("liaowang_sensor_kernel_drops", "packets dropped: capture ring full", registry=r)
        self.kernel_freezes = Gauge("liaowang_sensor_kernel_freezes", "times the capture ring was full", registry=r)

    def watch(self, counters: Callable[[], KernelCounters]) -> None:
        """Report a live capture's kernel counters at every scrape."""
        self.kernel_packets.set_function(lambda: counters().packets)
        self.kernel_drops.set_function(lambda: counters().drops)
        self.kernel_freezes.set_function(lambda: counters().freezes)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("liaowang_worker_messages", "messages processed", ["topic"], registry=r)
        self.packets = Counter("liaowang_worker_packets", "packets through the flow stage", registry=r)
        self.flows = Counter("liaowang_worker_flows", "flows stored", registry=r)
        self.alerts = Counter("liaowang_worker_alerts", "alerts stored", registry=r)
        self.duplicates = Counter("liaowang_worker_duplicates", "re-delivered parts skipped", registry=r)
        self.dead_letters = Counter("liaowang_worker_dead_letters", "messages sent to the dead-letter topic",
                                    registry=r)
        self.checkpoints = Counter("liaowang_worker_checkpoints", "checkpoints (store, state, offsets)", registry=r)
        self.lag = Gauge("liaowang_worker_consumer_lag", "messages fetched but not yet committed",
                         ["topic", "partition"], registry=r)
        self.partitions = Gauge("liaowang_worker_partitions", "partitions assigned", ["topic"], registry=r)
        self.latency = Histogram("liaowang_worker_detection_latency_seconds",
                                 "sensor read of a batch -> its flows and alerts in the store",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60), registry=r)
        self.checkpoint_seconds = Histogram(
            "liaowang_worker_checkpoint_seconds", "time a checkpoint spends, by phase (deliver: the flow parts "
            "to the broker; store: the results; state: partition state; commit: offsets)", ["phase"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
    start_http_server(port, addr=host, registry=registry)
