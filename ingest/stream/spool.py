"""The sensor's outbox: a bounded in-memory queue that spills to a bounded disk spool.

Capture never waits for the broker: batches queue in memory while the sender
keeps up; when it does not (a slow broker fills the queue, or a send failed)
new batches go to disk,
in files named by sequence, and the sender drains memory first, then the disk,
so delivery stays in batch order.  Memory only takes new batches while the
disk spool is empty.  When the spool is full too, a batch is dropped (with
``block`` False) and counted, or the producer waits (reading files, where
nothing is lost by waiting).
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: one item: a batch's messages, (partition, value) each
Messages = list[tuple[int, bytes]]


@dataclass
class OutboxStats:
    queued: int = 0
    spooled: int = 0
    dropped_batches: int = 0
    dropped_packets: int = 0
    spool_bytes: int = 0
    spool_batches: int = 0
    memory_batches: int = 0


class Outbox:
    def __init__(self, spool_dir: Path, max_spool_bytes: int = 1 << 30, max_memory_batches: int = 8,
                 block: bool = False) -> None:
        self.dir = spool_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_spool_bytes = max_spool_bytes
        self.max_memory = max_memory_batches
        self.block = block
        self.stats = OutboxStats()
        self._memory: collections.deque[tuple[int, Messages]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        #: the sender cannot deliver: new batches go straight to disk (memory would be lost on a crash)
        self.degraded = False
        # batches a previous run left on disk go first
        self._files = collections.deque(sorted(self.dir.glob("*.spool")))
        self.stats.spool_bytes = sum(p.stat().st_size for p in self._files)
        self.stats.spool_batches = len(self._files)

    def put(self, seq: int, messages: Messages, packets: int = 0) -> bool:
        """Queue one batch; False if it was dropped."""
        size = sum(len(v) + 12 for _, v in messages)
        with self._cond:
            while True:
                if not self._files and not self.degraded and len(self._memory) < self.max_memory:
                    self._memory.append((seq, messages))
                    self.stats.queued += 1
                    break
                if self.stats.spool_bytes + size <= self.max_spool_bytes:
                    self._spool(seq, messages, size)
                    break
                if not self.block:
                    self.stats.dropped_batches += 1
                    self.stats.dropped_packets += packets
                    return False
                self._cond.wait(0.5)
            self.stats.memory_batches = len(self._memory)
            self._cond.notify_all()
            return True

    def peek(self, timeout: float | None = None) -> tuple[int, Messages] | None:
        """The oldest batch (left in place until :meth:`pop`); None when closed and empty, or on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._memory or self._files or self._closed, timeout):
                return None
            if self._memory:
                return self._memory[0]
            if self._files:
                return _read(self._files[0])
            return None

    def pop(self) -> None:
        """The batch :meth:`peek` gave was delivered."""
        with self._cond:
            if self._memory:
                self._memory.popleft()
            elif self._files:
                path = self._files.popleft()
                self.stats.spool_bytes -= path.stat().st_size
                self.stats.spool_batches -= 1
                path.unlink()
            self.stats.memory_batches = len(self._memory)
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """Closed, and everything queued or spooled was delivered."""
        with self._cond:
            return self._closed and not self._memory and not self._files

    def close(self) -> None:
        """No more batches: :meth:`peek` returns None once everything queued is delivered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_empty(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._memory and not self._files, timeout)

    def _spool(self, seq: int, messages: Messages, size: int) -> None:
        # named by the time spooled (then the batch): file order is delivery order across runs
        path = self.dir / f"{time.time_ns():020d}-{seq:012d}.spool"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for partition, value in messages:
                f.write(struct.pack(">IQ", partition, len(value)))
                f.write(value)
        os.replace(tmp, path)
        self._files.append(path)
        self.stats.spooled += 1
        self.stats.spool_bytes += path.stat().st_size
        self.stats.spool_batches += 1


def _read(path: Path) -> tuple[int, Messages]:
    data = path.read_bytes()
    out: Messages = []
    pos = 0
    while pos < len(data):
        partition, n = struct.unpack_from(">IQ", data, pos)
        pos += 12
        out.append((partition, data[pos:pos + n]))
        pos += n
    return int(path.stem.rsplit("-", 1)[1]), out
