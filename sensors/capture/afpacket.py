"""Live capture from a Linux AF_PACKET socket with a TPACKET_V3 memory-mapped ring.

The kernel fills blocks of the ring with packets (each a ``tpacket3_hdr``, a
``sockaddr_ll`` and the frame) and hands a block to user space when it is full
or its timeout expires.  A batch is made by copying the packet area of every
retired block back to back into one buffer: the packets of consecutive blocks
then form one chain (each record's length is ``align8(tp_mac + tp_snaplen)``),
which :func:`~sensors.capture.walk.chain_walk` walks with numpy exactly as it
walks a pcap file.  Blocks go back to the kernel as soon as they are copied, so
the ring is free for new traffic while the batch is decoded elsewhere.

Frames whose VLAN tag the kernel moved into the header (``TP_STATUS_VLAN_VALID``:
it always does on receive) get the tag put back, so the decoder sees the bytes
that were on the wire, as in a capture file.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sensors.capture import bpf
from sensors.capture.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch
from sensors.capture.walk import PAD, Windows, chain_walk, u_view

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SIOCGIFHWADDR = 0x8927

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

#: tpacket3_hdr (48 bytes) followed by sockaddr_ll (20)
HDR_LEN = 48
V3_ALIGNMENT = 8
#: PACKET_FANOUT modes; hash keeps both directions of a flow on one socket (the kernel's flow hash is symmetric)
FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "qm": 5}
FANOUT_FLAG_DEFRAG = 0x8000

#: ARPHRD_* of /sys/class/net/IF/type -> link type of the frames a SOCK_RAW socket delivers
ARPHRD_LINKTYPES = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW, 776: LINKTYPE_RAW,
                    778: LINKTYPE_RAW, 768: LINKTYPE_RAW, 769: LINKTYPE_RAW}


class CaptureOpenError(Exception):
    """The interface cannot be captured from (one clear message: what is missing)."""


@dataclass
class RingConfig:
    ring_bytes: int = 256 << 20
    block_bytes: int = 1 << 20  # also the largest frame the ring holds whole
    block_timeout_ms: int = 50  # a partly filled block is handed over after this long
    promiscuous: bool = True
    bpf_filter: str | None = None
    fanout_group: int | None = None  # several sensor processes share the interface's packets
    fanout_mode: str = "hash"
    ignore_outgoing: bool = True  # a tap or SPAN port sends nothing; our own host's replies are not traffic


@dataclass
class KernelCounters:
    """PACKET_STATISTICS, accumulated (the kernel resets them on every read)."""

    packets: int = 0  # seen by the socket, including the dropped ones
    drops: int = 0  # no room in the ring
    freezes: int = 0  # times the ring was full (queue frozen)


class TpacketRecords:
    """The chain format of ring records laid end to end, for :func:`chain_walk`."""

    header_len = HDR_LEN
    alignment = V3_ALIGNMENT

    def __init__(self, mac_hint: int, sec_hint: int) -> None:
        self.mac_hint, self.sec_hint = mac_hint, sec_hint

    def header_ok(self, buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mac = u_view(buf, "<u2")[pos + 24].astype(np.int64)
        snap = u_view(buf, "<u4")[pos + 12].astype(np.int64)
        nxt = pos + (mac + snap + V3_ALIGNMENT - 1) // V3_ALIGNMENT * V3_ALIGNMENT
        return (mac >= HDR_LEN) & (snap <= u_view(buf, "<u4")[pos + 16]), nxt

    def step(self, buf: np.ndarray, pos: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
        ok, nxt = self.header_ok(buf, pos)
        return ok & (nxt <= end), nxt

    def candidates(self, window: Windows) -> np.ndarray:
        return (window.at(window.buf, 24) == (self.mac_hint & 0xFF)) & (window.at(window.buf, 25) == self.mac_hint >> 8)

    def start_ok(self, buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
        v32 = u_view(buf, "<u4")
        sec = v32[pos + 4].astype(np.int64)
        return ((u_view(buf, "<u2")[pos + 24] == self.mac_hint) & (v32[pos + 8] < 1_000_000_000)
                & (np.abs(sec - self.sec_hint) < 86_400))


def link_type_of(sock: socket.socket, iface: str) -> int:
    """The link type of ``iface``'s frames, asked of the kernel in the socket's network namespace."""
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", iface.encode()[:15]))
    except OSError:
        raise CaptureOpenError(f"{iface}: no such network interface") from None
    arphrd = struct.unpack_from("H", raw, 16)[0]
    if arphrd not in ARPHRD_LINKTYPES:
        raise CaptureOpenError(f"{iface}: link type ARPHRD {arphrd} is not supported by the AF_PACKET engine "
                               "(try --engine pcap)")
    return ARPHRD_LINKTYPES[arphrd]


class AfPacketRing:
    """One AF_PACKET socket with its TPACKET_V3 ring on one interface."""

    def __init__(self, iface: str, config: RingConfig | None = None) -> None:
        self.iface = iface
        self.config = c = config or RingConfig()
        page = mmap.PAGESIZE
        if c.block_bytes % page or c.block_bytes < 65536 + page:
            raise CaptureOpenError(f"ring block size {c.block_bytes} must be a multiple of {page} and hold a 64 KiB "
                                   "frame")
        self.block_count = max(2, c.ring_bytes // c.block_bytes)
        self.counters = KernelCounters()
        self.captured = 0  # packets handed out
        self._next_block = 0
        try:
            # protocol 0: no packets until bind(), so none arrive unfiltered or from other interfaces
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureOpenError(
                f"{iface}: opening a packet socket needs CAP_NET_RAW (run as root, or "
                f"`setcap cap_net_raw,cap_net_admin+eip {os.path.realpath(sys.executable)}`)") from None
        try:
            self.link_type = link_type_of(self.sock, iface)
            self._setup(iface, c)
        except BaseException:
            self.sock.close()
            raise

    def _setup(self, iface: str, c: RingConfig) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        if c.ignore_outgoing:
            try:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:  # before Linux 4.20: outgoing packets are captured too
                pass
        if c.bpf_filter:
            program = bpf.compile_filter(c.bpf_filter, self.link_type)
            holder, fprog = bpf.sock_fprog(program)  # the kernel copies the instructions from holder
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        req = struct.pack("7I", c.block_bytes, self.block_count, c.block_bytes, self.block_count,
                          c.block_timeout_ms, 0, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            raise CaptureOpenError(f"{iface}: cannot allocate a {self.block_count} x {c.block_bytes} byte ring: "
                                   f"{exc.strerror} (try a smaller --ring-mb)") from None
        self.ring = mmap.mmap(s.fileno(), self.block_count * c.block_bytes, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._ring = np.frombuffer(self.ring, dtype=np.uint8)
        try:
            s.bind((iface, ETH_P_ALL))
        except OSError as exc:
            raise CaptureOpenError(f"{iface}: cannot bind: {exc.strerror}") from None
        if c.promiscuous:
            ifindex = socket.if_nametoindex(iface)
            try:
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0,
                                                                             b""))
            except PermissionError:
                raise CaptureOpenError(f"{iface}: promiscuous mode needs CAP_NET_ADMIN (or use --no-promisc)") from None
        if c.fanout_group is not None:
            if c.fanout_mode not in FANOUT_MODES:
                raise CaptureOpenError(f"fanout mode {c.fanout_mode!r}: one of {', '.join(FANOUT_MODES)}")
            arg = (c.fanout_group & 0xFFFF) | ((FANOUT_MODES[c.fanout_mode] | FANOUT_FLAG_DEFRAG) << 16)
            try:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", arg))
            except OSError as exc:
                raise CaptureOpenError(f"{iface}: cannot join fanout group {c.fanout_group} ({c.fanout_mode}): "
                                       f"{exc.strerror} (every member must use the same mode)") from None
        self._poll = select.poll()
        self._poll.register(s.fileno(), select.POLLIN | select.POLLERR)

    # -- blocks --
    def _block_ready(self, i: int) -> bool:
        off = i * self.config.block_bytes
        return bool(struct.unpack_from("I", self.ring, off + 8)[0] & TP_STATUS_USER)

    def wait(self, timeout_s: float) -> bool:
        """True when a retired block is waiting (or after ``timeout_s``)."""
        if self._block_ready(self._next_block):
            return True
        self._poll.poll(max(0, int(timeout_s * 1000)))
        return self._block_ready(self._next_block)

    def read_into(self, buf: np.ndarray, pos: int, limit: int) -> tuple[int, int]:
        """Copy retired blocks' packet areas to ``buf[pos:]`` while they fit below ``limit``.

        Returns (new pos, packets).  Each block is released to the kernel once copied.
        """
        bs = self.config.block_bytes
        packets = 0
        while self._block_ready(self._next_block):
            off = self._next_block * bs
            num, first, length = struct.unpack_from("III", self.ring, off + 12)
            size = length - first
            if pos + size > limit and packets:
                break
            buf[pos:pos + size] = self._ring[off + first:off + length]
            struct.pack_into("I", self.ring, off + 8, TP_STATUS_KERNEL)  # hand the block back
            self._next_block = (self._next_block + 1) % self.block_count
            pos += size
            packets += num
        return pos, packets

    def frames(self, buf: np.ndarray, end: int, packets: int) -> FrameBatch:
        """The frames of ``packets`` records in ``buf[:end]`` (as left by :meth:`read_into`).

        VLAN-tagged frames get their tag back in place (see :func:`_reinsert_vlan`).
        """
        v16, v32 = u_view(buf, "<u2"), u_view(buf, "<u4")
        walk = chain_walk(TpacketRecords(int(v16[24]), int(v32[4])), buf, 0, end)
        off = walk.offsets
        notes = [] if len(off) == packets and walk.next_pos == end else [
            f"ring walk found {len(off)} of {packets} packets (stopped at byte {walk.next_pos} of {end})"]
        mac = v16[off + 24].astype(np.int64)
        caplen = v32[off + 12].astype(np.int64)
        wirelen = v32[off + 16].astype(np.int64)
        status = v32[off + 20]
        ts = v32[off + 4].astype(np.int64) * 1_000_000_000 + v32[off + 8].astype(np.int64)
        data_off = off + mac
        vlan = np.flatnonzero(status & TP_STATUS_VLAN_VALID)
        if len(vlan) and self.link_type == LINKTYPE_ETHERNET:
            tpid = np.where(status[vlan] & TP_STATUS_VLAN_TPID_VALID, v16[off[vlan] + 36], 0x8100)
            tci = v32[off[vlan] + 32] & 0xFFFF
            data_off[vlan] = _reinsert_vlan(buf, data_off[vlan], tpid, tci)
            caplen[vlan] += 4
            wirelen[vlan] += 4
        first = self.captured
        self.captured += len(off)
        n = len(off)
        return FrameBatch(buf=buf, data_off=data_off, caplen=caplen, wirelen=wirelen, ts_ns=ts,
                          link_type=np.full(n, self.link_type, dtype=np.uint16),
                          interface_id=np.zeros(n, dtype=np.uint16),
                          file_offset=np.arange(first, first + n, dtype=np.int64), notes=notes)

    def statistics(self) -> KernelCounters:
        """The kernel's counters since the socket opened."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freezes = struct.unpack("III", raw)
        self.counters.packets += packets
        self.counters.drops += drops
        self.counters.freezes += freezes
        return self.counters

    def close(self) -> None:
        if getattr(self, "_ring", None) is not None:
            self._ring = np.empty(0, dtype=np.uint8)
            self.ring.close()
        self.sock.close()


def _reinsert_vlan(buf: np.ndarray, data_off: np.ndarray, tpid: np.ndarray, tci: np.ndarray) -> np.ndarray:
    """Put each frame's tag back in front of its EtherType; the new frame starts 4 bytes earlier.

    Only the 12 MAC bytes move, into the record's header room (the frame starts
    at least 48 bytes into its record, and the header has been read): 16 bytes
    per frame whatever its size, and the frames keep their places.
    """
    macs = buf[data_off[:, None] + np.arange(12)]
    start = data_off - 4
    buf[start[:, None] + np.arange(12)] = macs
    tag = np.stack([tpid >> 8, tpid & 0xFF, tci >> 8, tci & 0xFF], axis=1).astype(np.uint8)
    buf[(start + 12)[:, None] + np.arange(4)] = tag
    return start


def batch_capacity(chunk_bytes: int, config: RingConfig) -> int:
    """Bytes a batch buffer needs: a chunk, one more block, padding."""
    return chunk_bytes + config.block_bytes + 2 * PAD


class Flag(Protocol):
    def is_set(self) -> bool: ...


def fill_batch(ring: AfPacketRing, buf: np.ndarray, chunk_bytes: int, max_wait_s: float,
               stop: Flag | None = None) -> FrameBatch:
    """Wait for traffic and copy retired blocks into ``buf`` until ``chunk_bytes`` or ``max_wait_s``.

    ``stop``: an object with ``is_set()``; when set, returns what is there at once.
    """
    deadline = time.monotonic() + max_wait_s
    pos = packets = 0
    limit = chunk_bytes + ring.config.block_bytes
    while True:
        pos, n = ring.read_into(buf, pos, limit)  # every block retired by now
        packets += n
        left = deadline - time.monotonic()
        if pos >= chunk_bytes or left <= 0 or (stop is not None and stop.is_set()):
            break
        ring.wait(min(left, 0.1))
    buf[pos:pos + PAD] = 0
    return ring.frames(buf, pos, packets)


__all__ = ["AfPacketRing", "CaptureOpenError", "KernelCounters", "RingConfig", "batch_capacity", "fill_batch",
           "link_type_of"]
