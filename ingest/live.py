"""``liaowang sensor --iface``: a live interface through the same pipeline as a replay.

The capture runs in its own forked process and only captures: it copies the
ring's retired blocks into batch buffers in shared memory and goes back to
the ring.  Decoders map those buffers; this process assembles flows and runs
detection.  While decoders fall behind, up to ``backlog_bytes`` of batches
wait for them; beyond that the ring fills and the kernel drops packets, which
are counted (PACKET_STATISTICS) and reported per batch, in the summary, as
metrics and on the console's Sensors page, never silently.

SIGINT/SIGTERM (or ``duration_s``) stop the capture; everything captured by
then is decoded, detected and written before the run ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from detection.engine import DetectionEngine
from detection.trend import TrendConfig
from ingest.notify import Notifier
from ingest.replay import ReplaySummary, run
from ingest.retention import Retention
from ingest.store.api import Store
from ingest.workers import BatchStats
from sensors.capture.live import LiveCapture

DEFAULT_BACKLOG_BYTES = 1 << 30


def in_flight(capture: LiveCapture, backlog_bytes: int) -> int:
    """Batches the capture may have waiting for decoders."""
    return max(2, backlog_bytes // capture.options.chunk_bytes)


def stop_on_signals(capture: LiveCapture, duration_s: float | None = None) -> Callable[[], None]:
    """SIGINT/SIGTERM (and ``duration_s``) end the capture gracefully; returns a function restoring the handlers."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, frame: FrameType | None) -> None:
        capture.stop.set()

    for sig in previous:
        signal.signal(sig, stop)
    timer = threading.Timer(duration_s, capture.stop.set) if duration_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()

    def restore() -> None:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def capture(live: LiveCapture, out_dir: Path, engine: DetectionEngine, *, store: Store | None = None,
            sensor: str = "", idle_timeout_s: float = 120.0, active_timeout_s: float = 1800.0,
            processes: int | None = None, backlog_bytes: int = DEFAULT_BACKLOG_BYTES, duration_s: float | None = None,
            on_batch: Callable[[ReplaySummary, BatchStats], None] | None = None,
            retention: Retention | None = None, notifier: Notifier | None = None,
            trend: TrendConfig | None = None) -> ReplaySummary:
    """Capture until stopped; outputs as ``liaowang replay`` writes them, and into ``store`` as they come;
    the packets into ``retention`` if given; alerts and incidents to ``notifier`` as they are found."""
    restore = stop_on_signals(live, duration_s)
    try:
        return run(live, out_dir, engine, idle_timeout_s=idle_timeout_s, active_timeout_s=active_timeout_s,
                   processes=processes, in_flight=in_flight(live, backlog_bytes), on_batch=on_batch, store=store,
                   sensor=sensor, retention=retention, notifier=notifier, trend=trend)
    finally:
        restore()
        live.close()


__all__ = ["DEFAULT_BACKLOG_BYTES", "capture", "in_flight", "stop_on_signals"]
