"""Packet batches from capture files, decoded in this process or in a second one.

The decoder and the flow stage each take about half of a replay's time, so on a
machine with two cores the decoder runs in a forked process.  Each packet batch
crosses as an Arrow IPC file in shared memory (/dev/shm): written once by the
decoder, memory-mapped by the consumer, no copy through a pipe.  A semaphore
keeps at most ``MAX_IN_FLIGHT`` batches outstanding, so memory stays bounded.
Both ways give the same batches in the same order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Semaphore

import pyarrow as pa

from sensors.capture.source import Damage, read_frames
from sensors.decode import decode

MAX_IN_FLIGHT = 3
SHM_DIR = "/dev/shm"


def packet_batches(files: list[str], chunk_bytes: int, damages: list[Damage]) -> Iterator[pa.RecordBatch]:
    """Read and decode in this process."""
    for i, path in enumerate(files):
        for frames in read_frames(path, chunk_bytes, file_index=i, damages=damages):
            yield decode(frames)


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and os.path.isdir(SHM_DIR) and (os.cpu_count() or 1) > 1


def packet_batches_forked(files: list[str], chunk_bytes: int, damages: list[Damage]) -> Iterator[pa.RecordBatch]:
    """The same batches, decoded in a forked process (see module docstring)."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    slots = ctx.Semaphore(MAX_IN_FLIGHT)
    workdir = tempfile.mkdtemp(prefix="liaowang-", dir=SHM_DIR)
    child = ctx.Process(target=_decoder_main, args=(files, chunk_bytes, sender, slots, workdir), daemon=True)
    child.start()
    sender.close()
    try:
        while True:
            kind, payload = receiver.recv()
            if kind == "batch":
                with pa.memory_map(payload) as source:
                    batch = pa.ipc.open_file(source).get_batch(0)
                os.unlink(payload)  # the mapping stays valid until the batch is released
                yield batch
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


def _decoder_main(files: list[str], chunk_bytes: int, out: Connection, slots: Semaphore, workdir: str) -> None:
    try:
        damages: list[Damage] = []
        for n, batch in enumerate(packet_batches(files, chunk_bytes, damages)):
            slots.acquire()
            path = os.path.join(workdir, f"{n}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
            out.send(("batch", path))
        out.send(("done", damages))
    except BaseException:  # report everything, including KeyboardInterrupt, to the consumer
        out.send(("error", traceback.format_exc()))
    finally:
        out.close()
