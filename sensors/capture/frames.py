"""The hand-over between capture readers and the decoder: frames as parallel arrays."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sensors.capture.walk import PAD

if TYPE_CHECKING:
    from sensors.capture.source import Damage, MappedFrames

#: how late a packet may come after a later one (files of one replay overlap a little): time windows wait this
#: long, and an input that starts earlier than the time reached by more begins a new timeline
PACKET_LATENESS_S = 5.0
PACKET_LATENESS_NS = int(PACKET_LATENESS_S * 1e9)

# Link-layer header types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
#: DLT_RAW as written by some BSD/OpenBSD tools
LINKTYPE_RAW_BSD = 12
LINKTYPE_RAW_OPENBSD = 14

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "null",
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_RAW: "raw",
    LINKTYPE_RAW_BSD: "raw",
    LINKTYPE_RAW_OPENBSD: "raw",
    LINKTYPE_LOOP: "loop",
    LINKTYPE_LINUX_SLL: "linux_sll",
    LINKTYPE_LINUX_SLL2: "linux_sll2",
    LINKTYPE_IPV4: "ipv4",
    LINKTYPE_IPV6: "ipv6",
}


@dataclass
class FrameBatch:
    """A chunk of captured frames; the bytes stay in ``buf`` (no per-packet objects).

    ``buf`` is padded with zeros after the last frame so that decoders may read a
    few bytes past a truncated frame without bounds checks; they use
    ``data_off + caplen`` to decide what is real.
    """

    buf: np.ndarray  # uint8, the chunk's bytes (+ padding)
    data_off: np.ndarray  # int64, first byte of each frame in buf
    caplen: np.ndarray  # int64, captured bytes
    wirelen: np.ndarray  # int64, original length on the wire
    ts_ns: np.ndarray  # int64, UTC nanoseconds since the epoch
    link_type: np.ndarray  # uint16, per frame (pcapng interfaces differ)
    interface_id: np.ndarray  # uint16
    file_offset: np.ndarray  # int64, record offset in its (decompressed) file
    file_index: int = 0  # index of the source file in the replay's file list
    #: file offset of ``buf[0]`` when ``buf`` is a view of a memory-mapped file
    #: (then another process can map the same bytes instead of receiving them), else -1
    mapped_at: int = -1
    notes: list[str] = field(default_factory=list)
    #: live capture: packets the kernel dropped (ring full) while this batch filled
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.data_off)

    @classmethod
    def of(cls, frames: list[tuple[int, int, int, bytes]]) -> FrameBatch:
        """A batch of (ts ns, wire length, link type, bytes) frames, copied back to back (for the few
        frames a lookup or the scapy engine has, not for capture files)."""
        lengths = np.array([len(f[3]) for f in frames], dtype=np.int64)
        total = int(lengths.sum())
        buf = np.zeros(total + PAD, dtype=np.uint8)
        buf[:total] = np.frombuffer(b"".join(f[3] for f in frames), dtype=np.uint8)
        n = len(frames)
        return cls(buf=buf, data_off=np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)[:n], caplen=lengths,
                   wirelen=np.array([f[1] for f in frames], dtype=np.int64),
                   ts_ns=np.array([f[0] for f in frames], dtype=np.int64),
                   link_type=np.array([f[2] for f in frames], dtype=np.uint16),
                   interface_id=np.zeros(n, dtype=np.uint16), file_offset=np.arange(n, dtype=np.int64))


class FrameSource(Protocol):
    """Where batches come from: capture files or a live interface."""

    #: a live source's batches must not wait for decoding: its reader only captures
    live: bool

    def label(self, file_index: int) -> str:
        """What a batch of ``file_index`` is named by in statistics (a file's path, an interface)."""
        ...

    def batches(self, damages: list[Damage], shm_dir: str | None = None
                ) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
        """Batches, each with a reference another process can map its bytes by (None: it cannot).

        ``shm_dir``: where a live source may put its batch buffers so that they can be mapped.
        """
        ...
