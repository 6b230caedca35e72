"""A network interface as a :class:`~sensors.capture.frames.FrameSource`.

Engines, best first:

- ``afpacket``: Linux AF_PACKET TPACKET_V3 ring (:mod:`sensors.capture.afpacket`);
  zero-copy from the kernel, the default on Linux.
- ``pcap``: libpcap through ``dumpcap -w -`` or ``tcpdump -w -`` (for other
  systems and unusual interfaces); its pcap stream is walked like a capture file.
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
import re
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
from sensors.capture.frames import LINKTYPE_ETHERNET, FrameBatch
from sensors.capture.source import Damage, MappedFrames
from sensors.capture.walk import PAD, chain_walk

log = logging.getLogger("liaowang.capture")

ENGINES = ("auto", "afpacket", "pcap", "scapy")
#: after a stop, tcpdump is let run until it has written nothing for this long (it is behind the wire)
QUIET_S = 0.5


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
        self.ready = mp.get_context("fork").Event()  # the capture is open: traffic from now on is seen
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
            self.ready.set()
        elif engine == "pcap":
            if not shutil.which("dumpcap") and not shutil.which("tcpdump"):
                raise CaptureOpenError("the pcap engine runs dumpcap or tcpdump (libpcap): apt-get install tcpdump")
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
        cmd = _libpcap_command(self.iface, o)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        said = proc.stderr.readline().decode(errors="replace")  # "Capturing on", "listening on", or why not
        if not re.search("capturing on|listening on", said, re.I):
            proc.wait()
            raise CaptureOpenError(f"{self.iface}: {cmd[0]} cannot capture: {said.strip() or 'it exited'}")
        if cmd[0] == "tcpdump":  # it says so once capturing; dumpcap says so earlier, and is ready at its header
            self.ready.set()
        fd = proc.stdout.fileno()
        fmt: pcap.PcapRecords | None = None  # tcpdump writes the file header with the first packet
        buf = np.zeros(o.chunk_bytes * 2 + PAD, dtype=np.uint8)
        filled = offset = 0
        eof = False
        last_data = time.monotonic()
        try:
            while not eof:
                deadline = time.monotonic() + o.max_wait_s
                while filled < o.chunk_bytes and time.monotonic() < deadline and not eof:
                    if self.stop.is_set() and proc.poll() is None and time.monotonic() - last_data > QUIET_S:
                        proc.terminate()  # it has caught up (what it is sent on SIGTERM, it drops)
                    ready, _, _ = select.select([fd], [], [], 0.05)
                    if ready:
                        chunk = os.read(fd, len(buf) - PAD - filled)
                        eof = not chunk
                        last_data = time.monotonic()
                        buf[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                        filled += len(chunk)
                if fmt is None:
                    if filled < pcap.GLOBAL_HEADER_LEN:
                        continue
                    header = pcap.parse_global_header(bytes(buf[:pcap.GLOBAL_HEADER_LEN]))
                    if header is None:
                        raise CaptureOpenError(f"{self.iface}: tcpdump wrote no pcap stream")
                    fmt, link_type = pcap.PcapRecords(header), header.link_type
                    self.ready.set()
                    filled -= pcap.GLOBAL_HEADER_LEN
                    buf[:filled] = buf[pcap.GLOBAL_HEADER_LEN:pcap.GLOBAL_HEADER_LEN + filled]
                    offset = pcap.GLOBAL_HEADER_LEN
                buf[filled:filled + PAD] = 0
                walk = chain_walk(fmt, buf, 0, filled)
                if len(walk.offsets):
                    cols = fmt.decode(buf, walk.offsets)
                    k = len(walk.offsets)
                    yield FrameBatch(buf=buf, data_off=cols["data_off"], caplen=cols["caplen"],
                                     wirelen=cols["wirelen"], ts_ns=cols["ts_ns"],
                                     link_type=np.full(k, link_type, dtype=np.uint16),
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
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
            # its parting words: dumpcap "received/dropped on interface 'IF': N/M", tcpdump "N packets received
            # by filter", "M packets dropped by kernel"
            said = proc.stderr.read().decode(errors="replace")
            both = re.search(r"received/dropped on interface '[^']*': (\d+)/(\d+)", said)
            received = re.search(r"(\d+) packets? received by filter", said)
            dropped = re.search(r"(\d+) packets? dropped by kernel", said)
            if both:
                self._publish(KernelCounters(int(both.group(1)), int(both.group(2)), 0))
            elif received and dropped:
                self._publish(KernelCounters(int(received.group(1)), int(dropped.group(1)), 0))

    def _scapy(self) -> Iterator[FrameBatch]:
        from scapy.all import conf  # heavy: only when asked for

        o = self.options
        sock = conf.L2listen(iface=self.iface, filter=o.ring.bpf_filter, promisc=o.ring.promiscuous)
        self.ready.set()
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


def _libpcap_command(iface: str, o: LiveOptions) -> list[str]:
    """dumpcap (Wireshark's capture engine: keeps up at tcpreplay's top speed and writes each packet at once at low
    rates), else tcpdump (its output is block-buffered: per-packet flushing (-U) loses most packets at speed)."""
    buffer_mb = max(o.ring.ring_bytes >> 20, 2)
    if shutil.which("dumpcap"):
        cmd = ["dumpcap", "-i", iface, "-P", "-w", "-", "-s", str(o.snaplen), "-B", str(buffer_mb)]
        if not o.ring.promiscuous:
            cmd.append("-p")
        return cmd + (["-f", o.ring.bpf_filter] if o.ring.bpf_filter else [])
    cmd = ["tcpdump", "-i", iface, "-s", str(o.snaplen), "-w", "-", "--immediate-mode",
           "--time-stamp-precision=nano", "-B", str(buffer_mb * 1024)]
    if not o.ring.promiscuous:
        cmd.append("-p")
    return cmd + ([o.ring.bpf_filter] if o.ring.bpf_filter else [])


def _frames_of(frames: list[tuple[int, bytes]]) -> FrameBatch:
    return FrameBatch.of([(ts, len(data), LINKTYPE_ETHERNET, data) for ts, data in frames])


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


__all__ = ["ENGINES", "LiveCapture", "LiveOptions"]
