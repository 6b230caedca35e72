"""Packet batches from capture files, decoded in this process or in a second one.

The decoder and the flow stage each take about half of a replay's time, so on a
machine with two cores the decoder runs in a forked process, together with any
stateless stage that follows it (``transform``, e.g. flow keying).  Each batch
crosses as an Arrow IPC file in shared memory (/dev/shm): written once by the
decoder, memory-mapped by the consumer, no copy through a pipe.  A semaphore
keeps at most ``MAX_IN_FLIGHT`` batches outstanding, so memory stays bounded.
Both ways give the same batches in the same order.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Semaphore

import pyarrow as pa
import pyarrow.compute as pc

from sensors.capture.source import Damage, read_frames
from sensors.decode import decode

MAX_IN_FLIGHT = 3
SHM_DIR = "/dev/shm"
Transform = Callable[[pa.RecordBatch], pa.RecordBatch]


@dataclass
class BatchStats:
    """Traffic counters of packet batches, computed where a batch is made; they add up."""

    packets: int = 0
    bytes: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    file_index: int = 0  # of the last batch added
    file_offset: int = 0  # of that batch's last frame
    decode_status: collections.Counter[int] = field(default_factory=collections.Counter)
    app_proto: collections.Counter[int] = field(default_factory=collections.Counter)
    tunnel_type: collections.Counter[int] = field(default_factory=collections.Counter)

    @classmethod
    def of(cls, packets: pa.RecordBatch) -> BatchStats:
        ts = pc.min_max(packets.column("ts").cast(pa.int64()))
        return cls(
            packets=packets.num_rows,
            bytes=pc.sum(packets.column("frame_len")).as_py(),
            first_ts_ns=ts["min"].as_py(),
            last_ts_ns=ts["max"].as_py(),
            file_index=packets.column("file_index")[-1].as_py(),
            file_offset=packets.column("file_offset")[-1].as_py(),
            decode_status=_counts(packets.column("decode_status")),
            app_proto=_counts(packets.column("app_proto")),
            tunnel_type=_counts(packets.column("tunnel_type")),
        )

    def add(self, other: BatchStats) -> None:
        self.packets += other.packets
        self.bytes += other.bytes
        firsts = [t for t in (self.first_ts_ns, other.first_ts_ns) if t is not None]
        lasts = [t for t in (self.last_ts_ns, other.last_ts_ns) if t is not None]
        self.first_ts_ns = min(firsts) if firsts else None
        self.last_ts_ns = max(lasts) if lasts else None
        self.file_index, self.file_offset = other.file_index, other.file_offset
        self.decode_status.update(other.decode_status)
        self.app_proto.update(other.app_proto)
        self.tunnel_type.update(other.tunnel_type)


def _counts(col: pa.Array) -> collections.Counter[int]:
    vc = pc.value_counts(pc.drop_null(col))
    return collections.Counter(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))


def packet_batches(
    files: list[str], chunk_bytes: int, damages: list[Damage], transform: Transform | None = None
) -> Iterator[tuple[pa.RecordBatch, BatchStats]]:
    """Read, decode and ``transform`` in this process."""
    for i, path in enumerate(files):
        for frames in read_frames(path, chunk_bytes, file_index=i, damages=damages):
            if not len(frames):
                continue
            packets = decode(frames)
            yield (transform(packets) if transform else packets), BatchStats.of(packets)


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and os.path.isdir(SHM_DIR) and (os.cpu_count() or 1) > 1


def packet_batches_forked(
    files: list[str], chunk_bytes: int, damages: list[Damage], transform: Transform | None = None
) -> Iterator[tuple[pa.RecordBatch, BatchStats]]:
    """The same as :func:`packet_batches`, computed in a forked process (see module docstring)."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    slots = ctx.Semaphore(MAX_IN_FLIGHT)
    workdir = tempfile.mkdtemp(prefix="liaowang-", dir=SHM_DIR)
    child = ctx.Process(target=_decoder_main, args=(files, chunk_bytes, transform, sender, slots, workdir),
                        daemon=True)
    child.start()
    sender.close()
    try:
        while True:
            kind, payload = receiver.recv()
            if kind == "batch":
                path, stats = payload
                with pa.memory_map(path) as source:
                    batch = pa.ipc.open_file(source).get_batch(0)
                os.unlink(path)  # the mapping stays valid until the batch is released
                yield batch, stats
                del batch
                slots.release()
            elif kind == "done":
                damages.extend(payload)
                return
            else:
                raise RuntimeError(f"decoder process failed:\n{payload}")
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.terminate()
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


def _decoder_main(files: list[str], chunk_bytes: int, transform: Transform | None, out: Connection,
                  slots: Semaphore, workdir: str) -> None:
    try:
        damages: list[Damage] = []
        for n, (batch, stats) in enumerate(packet_batches(files, chunk_bytes, damages, transform)):
            slots.acquire()
            path = os.path.join(workdir, f"{n}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
            out.send(("batch", (path, stats)))
        out.send(("done", damages))
    except BaseException:  # report everything, including KeyboardInterrupt, to the consumer
        out.send(("error", traceback.format_exc()))
    finally:
        out.close()
