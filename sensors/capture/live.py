"""A network interface as a :class:`~sensors.capture.frames.FrameSource`.

Engines, best first:

- ``afpacket``: Linux AF_PACKET TPACKET_V3 ring (:mod:`sensors.capture.afpacket`);
  zero-copy from the kernel, the default on Linux.
- ``pcap``: libpcap through ``tcpdump -w -`` (for other systems and unusual
  interfaces); its pcap stream is walked like a capture file.
- ``scapy``: scapy's sniffer, one Python object per packet: the last resort
  (measured here: 36% of packets captured at 20k packets/s, 14% at 50k).

A batch is cut when it holds ``chunk_bytes`` or ``max_wait_s`` has passed, so a
quiet link still reports within that time.  :attr:`LiveCapture.stop` (an event
shared with forked readers) ends the capture: what the kernel holds is read
and handed out first.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sensors.capture import pcap
from sensors.capture.afpacket import (
    AfPacketRing,
    CaptureOpenError,
    KernelCounters,
    RingConfig,
    batch_capacity,
    fill_batch,
)
from sensors.capture.bpf import compile_filter
from sensors.capture.frames import FrameBatch
from sensors.capture.source import Damage, MappedFrames
from sensors.capture.walk import PAD, chain_walk

log = logging.getLogger("liaowang.capture")

ENGINES = ("auto", "afpacket", "pcap", "scapy")


@dataclass
class LiveOptions:
    engine: str = "auto"
    ring: RingConfig = field(default_factory=RingConfig)
    chunk_bytes: int = 8 << 20
    max_wait_s: float = 0.5
    snaplen: int = 262144  # pcap and scapy engines (the ring keeps whole frames up to its block size)


class LiveCapture:
    """One interface's packets in batches (see module docstring)."""

    live = True

    def __init__(self, iface: str, options: LiveOptions | None = None) -> None:
        self.iface = iface
        self.options = o = options or LiveOptions()
        self.stop = mp.get_context("fork").Event()
        #: kernel counters as the capturing process last read them (shared: it may be a forked reader)
        self._counters = mp.get_context("fork").Array("q", 3, lock=False)
        if o.engine not in ENGINES:
            raise CaptureOpenError(f"capture engine {o.engine!r}: one of {', '.join(ENGINES)}")
        engine = o.engine
        if engine == "auto":
            engine = "afpacket" if sys.platform.startswith("linux") else "pcap"
        self.engine = engine
        self._ring: AfPacketRing | None = None
        if engine == "afpacket":
            self._ring = AfPacketRing(iface, o.ring)  # opened here: errors show before anything forks
        elif engine == "pcap":
            if not shutil.which("tcpdump"):
                raise CaptureOpenError("the pcap engine runs tcpdump (libpcap): apt-get install tcpdump")
            if o.ring.bpf_filter:
                compile_filter(o.ring.bpf_filter, 1)  # a bad filter is an error now, not in tcpdump's stderr
        else:
            log.warning("capturing on %s with scapy's sniffer: one Python object per packet, it drops most packets "
                        "above a few thousand per second; use the afpacket or pcap engine", iface)

    @property
    def counters(self) -> KernelCounters:
        return KernelCounters(*[int(x) for x in self._counters])

    def label(self, file_index: int) -> str:
        return self.iface

    def batches(self, damages: list[Damage], shm_dir: str | None = None
                ) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
        if self.engine == "afpacket":
            yield from self._afpacket(shm_dir)
        elif self.engine == "pcap":
            yield from _with_refs(self._pcap(damages), shm_dir)
        else:
            yield from _with_refs(self._scapy(), shm_dir)

    # -- engines --
    def _afpacket(self, shm_dir: str | None) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
        ring = self._ring
        assert ring is not None
        o = self.options
        capacity = batch_capacity(o.chunk_bytes, ring.config)
        local = np.zeros(capacity, dtype=np.uint8) if shm_dir is None else None
        n = 0
        draining = False
        while True:
            stopping = self.stop.is_set()
            if stopping and not draining:
                # the block being filled retires after its timeout: then everything captured is readable
                time.sleep(ring.config.block_timeout_ms / 1000 * 2)
                draining = True
            buf, path = (local, None) if local is not None else _shm_buffer(shm_dir, n, capacity)
            assert buf is not None
            before = ring.counters.drops
            frames = fill_batch(ring, buf, o.chunk_bytes, 0.0 if draining else o.max_wait_s,
                                None if draining else self.stop)
            self._publish(ring.statistics())
            frames.dropped = ring.counters.drops - before
            if len(frames) or frames.dropped:
                ref = None if path is None else MappedFrames.handed_over(path, frames)
                yield frames, ref
                n += 1
            elif path is not None:
                os.unlink(path)
            if draining and not len(frames):
                return

    def _publish(self, c: KernelCounters) -> None:
        self._counters[0], self._counters[1], self._counters[2] = c.packets, c.drops, c.freezes

    def _pcap(self, damages: list[Damage]) -> Iterator[FrameBatch]:
        o = self.options
        cmd = ["tcpdump", "-i", self.iface, "-U", "-s", str(o.snaplen), "-w", "-", "--immediate-mode",
               "--time-stamp-precision=nano"]
        if not o.ring.promiscuous:
            cmd.append("-p")
        if o.ring.bpf_filter:
            cmd.append(o.ring.bpf_filter)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        fd = proc.stdout.fileno()
        head = _read_exactly(fd, pcap.GLOBAL_HEADER_LEN, proc)
        header = pcap.parse_global_header(head)
        if header is None:
            message = proc.stderr.read().decode(errors="replace").strip()
            raise CaptureOpenError(f"{self.iface}: tcpdump cannot capture: {message or 'no pcap stream'}")
        fmt = pcap.PcapRecords(header)
        buf = np.zeros(o.chunk_bytes * 2 + PAD, dtype=np.uint8)
        filled = offset = 0
        stopping = False
        try:
            while True:
                deadline = time.monotonic() + o.max_wait_s
                while filled < o.chunk_bytes and time.monotonic() < deadline:
                    if self.stop.is_set() and not stopping:
                        proc.terminate()  # tcpdump writes what it has and exits
                        stopping = True
                    ready, _, _ = select.select([fd], [], [], 0.05)
                    if ready:
                        chunk = os.read(fd, len(buf) - PAD - filled)
                        if not chunk:
                            stopping = True
                            break
                        buf[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                        filled += len(chunk)
                buf[filled:filled + PAD] = 0
                walk = chain_walk(fmt, buf, 0, filled)
                if len(walk.offsets):
                    cols = fmt.decode(buf, walk.offsets)
                    k = len(walk.offsets)
                    yield FrameBatch(buf=buf, data_off=cols["data_off"], caplen=cols["caplen"],
                                     wirelen=cols["wirelen"], ts_ns=cols["ts_ns"],
                                     link_type=np.full(k, header.link_type, dtype=np.uint16),
                                     interface_id=np.zeros(k, dtype=np.uint16),
                                     file_offset=walk.offsets + offset)
                    buf = buf.copy()  # the batch keeps the old buffer
                if walk.damaged:
                    damages.append(Damage(self.iface, offset + walk.next_pos, "corrupt pcap stream from tcpdump"))
                    return
                rest = filled - walk.next_pos
                buf[:rest] = buf[walk.next_pos:filled]
                offset += walk.next_pos
                filled = rest
                if stopping and proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                    return
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()

    def _scapy(self) -> Iterator[FrameBatch]:
        from scapy.all import conf  # heavy: only when asked for

        o = self.options
        sock = conf.L2listen(iface=self.iface, filter=o.ring.bpf_filter, promisc=o.ring.promiscuous)
        frames: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + o.max_wait_s
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([sock], [], [], 0.05)
                if ready:
                    pkt = sock.recv()
                    if pkt is not None:
                        frames.append((int(float(pkt.time) * 1e9), bytes(pkt)))
                if frames and time.monotonic() >= deadline:
                    yield _frames_of(frames)
                    frames = []
                    deadline = time.monotonic() + o.max_wait_s
            if frames:
                yield _frames_of(frames)
        finally:
            sock.close()

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()


def _frames_of(frames: list[tuple[int, bytes]]) -> FrameBatch:
    lens = np.array([len(b) for _, b in frames], dtype=np.int64)
    buf = np.zeros(int(lens.sum()) + PAD, dtype=np.uint8)
    buf[: int(lens.sum())] = np.frombuffer(b"".join(b for _, b in frames), dtype=np.uint8)
    n = len(frames)
    return FrameBatch(buf=buf, data_off=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), caplen=lens,
                      wirelen=lens.copy(), ts_ns=np.array([t for t, _ in frames], dtype=np.int64),
                      link_type=np.ones(n, dtype=np.uint16), interface_id=np.zeros(n, dtype=np.uint16),
                      file_offset=np.arange(n, dtype=np.int64))


def _with_refs(batches: Iterator[FrameBatch], shm_dir: str | None
               ) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
    """Batches of the engines that build them in private memory: copied to a mappable file when forked."""
    for n, frames in enumerate(batches):
        if shm_dir is None:
            yield frames, None
            continue
        shared, path = _shm_buffer(shm_dir, n, len(frames.buf))
        shared[:] = frames.buf
        frames.buf = shared
        yield frames, MappedFrames.handed_over(path, frames)


def _shm_buffer(shm_dir: str | None, n: int, size: int) -> tuple[np.ndarray, str]:
    """A zeroed buffer in a new file under ``shm_dir`` (a helper process maps it by name)."""
    assert shm_dir is not None
    path = os.path.join(shm_dir, f"capture-{n}.frames")
    with open(path, "w+b") as f:
        f.truncate(size)  # sparse: pages exist once written
        mm = mmap.mmap(f.fileno(), size)
    return np.frombuffer(mm, dtype=np.uint8), path


def _read_exactly(fd: int, n: int, proc: subprocess.Popen[bytes]) -> bytes:
    data = b""
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    return data


__all__ = ["ENGINES", "LiveCapture", "LiveOptions"]
