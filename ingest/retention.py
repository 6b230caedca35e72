"""Rolling packet retention for a live sensor: the decoders' hook that keeps every frame, indexed by flow key.

Each decoder process writes its own files (``sensors.capture.retain``), so
keeping packets costs no extra process and no extra copy between processes;
the flow-key hash is the one flows are assembled by
(:func:`detection.flows.keys.key_hash`), so the console finds a flow's packets
from its record (:func:`flow_packets`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from detection.flows.keys import flow_key_hash, packet_keys
from sensors.capture.extract import FlowMatch, matching_frames
from sensors.capture.frames import FrameBatch
from sensors.capture.retain import PacketRetention, RetentionPolicy, retained_frames
from sensors.capture.seal import Keyring


class Retention:
    """Writes the frames of every batch a process decodes; a forked process gets its own writer."""

    def __init__(self, policy: RetentionPolicy) -> None:
        self.policy = policy
        self._writer: PacketRetention | None = None
        self._pid = 0

    @property
    def directory(self) -> str:
        return str(self.policy.directory.resolve())

    def write(self, frames: FrameBatch, packets: pa.RecordBatch) -> None:
        if self._writer is None or self._pid != os.getpid():
            self._writer, self._pid = PacketRetention(self.policy, f"p{os.getpid()}"), os.getpid()
        keys = packet_keys(packets)
        key_hash = np.zeros(len(frames), dtype=np.uint64)  # 0: no flow (not IP, a later fragment)
        key_hash[keys.rows] = keys.hash
        self._writer.write(frames, key_hash)

    def close(self) -> None:
        if self._writer is not None and self._pid == os.getpid():
            self._writer.close()
            self._writer = None


def flow_packets(directory: Path, flow: Mapping[str, Any], match: FlowMatch, keyring: Keyring | None = None
                 ) -> list[tuple[int, int, int, bytes]]:
    """The retained packets of a flow record: found by its key hash and time, checked against its 5-tuple
    (``keyring`` opens sealed files)."""
    candidates = retained_frames(directory, flow_key_hash(flow), match.first_ns, match.last_ns, keyring)
    return matching_frames(candidates, match)


__all__ = ["Retention", "flow_packets"]
