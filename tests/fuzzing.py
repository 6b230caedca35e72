"""Mutated traffic for fuzzing the whole sensor and detection path (tests/test_fuzz.py, bench/fuzz.py).

Seeds are the frames of every bundled capture; a batch of mutants flips,
overwrites and truncates their bytes with numpy (a million mutants cost
seconds to make), so the decoders see mostly-valid packets broken in one
place, where parsers go wrong.  :class:`MutantSource` is a frame source like a
capture file, so the mutants go through exactly what a replay runs: decoding,
pseudonymisation, the protocol dissectors (tshark for NGAP), SBI, flows, rules
and detectors, and the output sinks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sensors.capture.extract import frame_tuples
from sensors.capture.frames import FrameBatch
from sensors.capture.source import Damage, MappedFrames, read_frames
from sensors.capture.walk import PAD

INTERESTING = np.array([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF], dtype=np.uint8)


class Seeds:
    """Every frame of the captures, back to back."""

    def __init__(self, paths: list[Path]) -> None:
        bufs, caplen, link, wirelen = [], [], [], []
        for p in paths:
            for f in read_frames(str(p)):
                bufs += [frame for _, _, _, frame in frame_tuples(f)]
                caplen.append(f.caplen)
                link.append(f.link_type)
                wirelen.append(f.wirelen)
        self.data = np.frombuffer(b"".join(bufs), dtype=np.uint8)
        self.caplen = np.concatenate(caplen)
        self.offset = np.r_[0, np.cumsum(self.caplen)[:-1]]
        self.link_type = np.concatenate(link)
        self.wirelen = np.concatenate(wirelen)

    def __len__(self) -> int:
        return len(self.caplen)

    def mutants(self, rng: np.random.Generator, n: int, ts_ns: int = 1_700_000_000_000_000_000) -> FrameBatch:
        """``n`` frames picked at random, each broken in up to 4 places: bit flips, interesting bytes,
        random bytes; a quarter cut short, some with a wire length that lies."""
        pick = rng.integers(0, len(self), n)
        caplen = self.caplen[pick].copy()
        total = int(caplen.sum())
        starts = np.r_[0, np.cumsum(caplen)[:-1]]
        buf = np.zeros(total + PAD, dtype=np.uint8)
        src = np.repeat(self.offset[pick] - starts, caplen) + np.arange(total)
        buf[:total] = self.data[src]
        hits = rng.integers(0, 5, n)  # mutations per frame
        frame = np.repeat(np.arange(n), hits)
        frame = frame[caplen[frame] > 0]
        # early bytes are the headers: bias positions towards them
        where = np.minimum((rng.random(len(frame)) ** 3 * caplen[frame]).astype(np.int64), caplen[frame] - 1)
        pos = starts[frame] + where
        kind = rng.integers(0, 3, len(frame))
        buf[pos[kind == 0]] ^= (1 << rng.integers(0, 8, int((kind == 0).sum()))).astype(np.uint8)
        buf[pos[kind == 1]] = rng.choice(INTERESTING, int((kind == 1).sum()))
        buf[pos[kind == 2]] = rng.integers(0, 256, int((kind == 2).sum()), dtype=np.uint8)
        cut = rng.random(n) < 0.25
        caplen[cut] = (caplen[cut] * rng.random(int(cut.sum()))).astype(np.int64)
        wirelen = np.maximum(self.wirelen[pick], caplen)
        lie = rng.random(n) < 0.05
        wirelen[lie] = rng.integers(0, 70_000, int(lie.sum()))
        return FrameBatch(buf=buf, data_off=starts.astype(np.int64), caplen=caplen.astype(np.int64),
                          wirelen=wirelen.astype(np.int64),
                          ts_ns=ts_ns + np.sort(rng.integers(0, 1_000_000_000, n)).astype(np.int64),
                          link_type=self.link_type[pick].astype(np.uint16), interface_id=np.zeros(n, dtype=np.uint16),
                          file_offset=np.arange(n, dtype=np.int64))


class MutantSource:
    """A frame source of ``batches`` batches of ``per_batch`` mutants, one second apart."""

    live = False

    def __init__(self, seeds: Seeds, seed: int, batches: int, per_batch: int) -> None:
        self.seeds, self.seed, self.count, self.per_batch = seeds, seed, batches, per_batch

    def label(self, file_index: int) -> str:
        return f"mutants-{self.seed}"

    def batches(self, damages: list[Damage], shm_dir: str | None = None
                ) -> Iterator[tuple[FrameBatch, MappedFrames | None]]:
        rng = np.random.default_rng(self.seed)
        for b in range(self.count):
            yield self.seeds.mutants(rng, self.per_batch, 1_700_000_000_000_000_000 + b * 1_000_000_000), None


def corrupt_file(data: bytes, rng: np.random.Generator) -> bytes:
    """A capture file broken the ways files break: cut short, bytes overwritten, a block's length wrong."""
    raw = np.frombuffer(data, dtype=np.uint8).copy()
    way = int(rng.integers(0, 3))
    if way == 0:
        return raw[:int(rng.integers(0, len(raw)))].tobytes()
    if way == 1:
        pos = rng.integers(0, len(raw), int(rng.integers(1, 64)))
        raw[pos] = rng.integers(0, 256, len(pos), dtype=np.uint8)
        return raw.tobytes()
    pos = int(rng.integers(0, max(len(raw) - 4, 1)))
    raw[pos:pos + 4] = np.frombuffer(rng.integers(0, 2**32, dtype=np.uint32).tobytes(), dtype=np.uint8)[:len(
        raw[pos:pos + 4])]
    return raw.tobytes()
