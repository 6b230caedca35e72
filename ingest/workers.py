"""Packet batches from capture files, decoded in this process or in forked ones.

Decoding takes about 60% of a replay and the flow stage the rest, so on a
machine with two cores decoding runs in forked processes while this one
assembles flows.  Plain pcap files are cut in fixed chunks that any process
can walk (:mod:`sensors.capture.chunks`): each decoder takes the next chunk and
walks and decodes it itself, so only chunk numbers cross and each page of the
file is faulted in once (:func:`_chunk_batches`); this process can read a chunk
again when it needs what its decoder left out (a thin keyed table).  Other inputs (pcapng, gzip, a live
capture) are walked in order by a reader, which hands each batch to a helper
(it gets the batch's frame index and maps the same file, so the bytes are never
copied) and decodes a batch itself only while every helper has one in reserve.
Each decoder runs any stateless stage that follows (``transform``, e.g. flow
keying).  Each batch crosses as an Arrow IPC file in shared memory (/dev/shm):
written once by its decoder, memory-mapped by the consumer.  A semaphore bounds
the batches outstanding, so memory stays bounded.  Every way gives the same
batches in the same order.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Semaphore
from typing import Any, Protocol, cast

import pyarrow as pa
import pyarrow.compute as pc

from sensors.capture.chunks import PcapChunks
from sensors.capture.frames import FrameBatch, FrameSource
from sensors.capture.source import CaptureFiles, Damage, FrameMapper, MappedFrames
from sensors.decode import decode

MAX_IN_FLIGHT = 3
#: batches a helper holds (the one it decodes and the next) before the reader decodes one itself
HELPER_QUEUE = 2
SHM_DIR = "/dev/shm"
#: a stateless stage after decoding: packets -> named output tables (e.g. flow keys and rule hits)
Transform = Callable[[pa.RecordBatch], dict[str, pa.RecordBatch]]
#: frames -> packet batch: :func:`sensors.decode.decode`, or a partial of it with its options
Decoder = Callable[[FrameBatch], pa.RecordBatch]
Outputs = dict[str, pa.RecordBatch]


class FrameSink(Protocol):
    """What a decoder hands each decoded batch's frames to (packet retention), in the decoding process."""

    def write(self, frames: FrameBatch, packets: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


#: the packet columns :meth:`BatchStats.of` reads
STATS_COLUMNS = frozenset({"ts", "frame_len", "file_index", "file_offset", "decode_status", "app_proto", "tunnel_type"})


@dataclass
class BatchStats:
    """Traffic counters of packet batches, computed where a batch is made; they add up."""

    packets: int = 0
    bytes: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    file_index: int = 0  # of the last batch added
    file_offset: int = 0  # of that batch's last frame
    dropped: int = 0  # live capture: packets the kernel dropped
    decode_status: collections.Counter[int] = field(default_factory=collections.Counter)
    app_proto: collections.Counter[int] = field(default_factory=collections.Counter)
    tunnel_type: collections.Counter[int] = field(default_factory=collections.Counter)
    #: not a counter: a plain pcap chunk's frames, read again in the process that took the batch (None elsewhere)
    reread: Callable[[], FrameBatch] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, packets: pa.RecordBatch, frames: FrameBatch | None = None) -> BatchStats:
        ts = pc.min_max(packets.column("ts").cast(pa.int64()))
        return cls(
            dropped=frames.dropped if frames is not None else 0,
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
        self.dropped += other.dropped
        self.decode_status.update(other.decode_status)
        self.app_proto.update(other.app_proto)
        self.tunnel_type.update(other.tunnel_type)


def _counts(col: pa.Array) -> collections.Counter[int]:
    vc = pc.value_counts(pc.drop_null(col))
    return collections.Counter(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))


def _decoded(frames: FrameBatch, decoder: Decoder, transform: Transform | None, keep: FrameSink | None = None
             ) -> tuple[Outputs, BatchStats]:
    """A batch's frames decoded (and kept, with ``keep``) and transformed, with their traffic counters."""
    packets = decoder(frames)
    if keep is not None:
        keep.write(frames, packets)
    return _stage(packets, transform), BatchStats.of(packets, frames)


def _stage(packets: pa.RecordBatch, transform: Transform | None) -> Outputs:
    return transform(packets) if transform else {"packets": packets}


def packet_batches(
    source: FrameSource, damages: list[Damage], transform: Transform | None = None, keep: FrameSink | None = None,
    decoder: Decoder = decode,
) -> Iterator[tuple[Outputs, BatchStats]]:
    """Read, decode and ``transform`` in this process (without a transform: ``{"packets": batch}``);
    ``keep`` gets every batch's frames."""
    try:
        for frames, _ in source.batches(damages):
            yield _decoded(frames, decoder, transform, keep)
    finally:
        if keep is not None:
            keep.close()


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and os.path.isdir(SHM_DIR) and (os.cpu_count() or 1) > 1


def default_processes() -> int:
    """Processes for a replay: the flow stage plus one decoder per core (at most two), when forking works."""
    return 1 + min(2, os.cpu_count() or 1) if can_fork() else 1


def packet_batches_forked(
    source: FrameSource, damages: list[Damage], transform: Transform | None = None,
    decoders: int = 1, in_flight: int | None = None, keep: FrameSink | None = None, decoder: Decoder = decode,
    chunk_transform: Transform | None = None,
) -> Iterator[tuple[Outputs, BatchStats]]:
    """The same as :func:`packet_batches`, computed by ``decoders`` forked processes (see module docstring).

    The processes start now, not at the first batch asked for: the caller's own setup overlaps their first
    batches.  They stop when the iterator ends, is closed or is dropped.

    A live source's reader only captures: ``decoders`` helpers decode, and up to
    ``in_flight`` batches wait for them (the capture's backlog) before the
    reader stops draining the ring and the kernel drops (and counts) packets.
    ``chunk_transform``: what the decoders of plain pcap chunks run instead of ``transform``, whose batches this
    process can read again: one that may leave out what is rarely needed (each batch's ``BatchStats.reread``
    gives its frames again).
    """
    # pyarrow imports numpy.ma when it first converts a numpy array, and dateutil when it first converts a Python
    # scalar (every decoder does both, at once): done here, the forked processes share them instead of each
    # loading them (~10 and ~4 ms apiece)
    import numpy.ma  # noqa: F401
    pa.scalar(0)

    in_flight = in_flight or MAX_IN_FLIGHT + decoders - 1
    chunked = source.chunked() if isinstance(source, CaptureFiles) and keep is None else None
    batches = (_chunk_batches(chunked, damages, transform, decoders, in_flight, decoder, chunk_transform)
               if chunked is not None else _reader_batches(source, damages, transform, decoders, in_flight, keep, decoder))
    next(batches)  # up to its first yield: the processes started
    return cast(Iterator[tuple[Outputs, BatchStats]], batches)


def _reader_batches(source: FrameSource, damages: list[Damage], transform: Transform | None, decoders: int,
                    in_flight: int, keep: FrameSink | None, decoder: Decoder
                    ) -> Iterator[tuple[Outputs, BatchStats] | None]:
    """Inputs walked in order by a reader (see module docstring); yields None first, once its processes started."""
    ctx = mp.get_context("fork")
    helpers = decoders if source.live else decoders - 1
    slots = ctx.Semaphore(in_flight)
    workdir = tempfile.mkdtemp(prefix="liaowang-", dir=SHM_DIR)
    reader_rx, reader_tx = ctx.Pipe(duplex=False)
    requests = [ctx.Pipe(duplex=False) for _ in range(helpers)]
    results = [ctx.Pipe(duplex=False) for _ in range(helpers)]
    decoded = ctx.RawArray("q", max(helpers, 1))  # batches each helper has finished (its own counter)
    procs = [ctx.Process(target=_helper_main, args=(req_rx, res_tx, transform, workdir, keep, decoder, decoded, i),
                         daemon=True)
             for i, ((req_rx, _), (_, res_tx)) in enumerate(zip(requests, results))]
    procs.append(ctx.Process(target=_reader_main, daemon=True, args=(
        source, transform, reader_tx, [tx for _, tx in requests], slots, workdir, keep, decoder, decoded)))
    for p in procs:
        p.start()
    for conn in [reader_tx, *(rx for rx, _ in requests), *(tx for _, tx in requests), *(tx for _, tx in results)]:
        conn.close()  # the children hold these ends
    finished = False
    try:
        yield None
        while True:
            kind, payload = _receive([reader_rx], procs)
            if kind == "helper":  # this batch was decoded by a helper: its result is next on that helper's pipe
                kind, payload = _receive([results[payload][0]], procs)
            if kind == "batch":
                paths, stats = payload
                outputs = _read_outputs(paths)
                yield outputs, stats
                del outputs
                slots.release()
            elif kind == "done":
                damages.extend(payload)
                finished = True
                return
            else:
                raise RuntimeError(f"decoder process failed:\n{payload}")
    finally:  # packets being retained are given their time to be written, whatever the end
        _shut_down(procs, workdir, finished or keep is not None)


def _read_outputs(paths: dict[str, str]) -> Outputs:
    """A decoder's output files, memory-mapped and removed (a mapping stays valid until its batch is released)."""
    outputs = {}
    for name, path in paths.items():
        with pa.memory_map(path) as source:
            outputs[name] = pa.ipc.open_file(source).get_batch(0)
        os.unlink(path)
    return outputs


def _shut_down(procs: Sequence[BaseProcess], workdir: str, finished: bool) -> None:
    """The decoder processes ended and their work directory removed.  ``finished``: they delivered everything and
    end by themselves (killed if they do not within 5 s); else (an error, the batches dropped unread) they are
    killed now: they may wait for a slot that is never released."""
    if not finished:
        for p in procs:
            if p.is_alive():
                p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    os.rmdir(workdir)


def _receive(conns: MutableSequence[Connection], procs: Sequence[BaseProcess]) -> tuple[str, Any]:
    """The next message from any of ``conns`` (those whose process closed them, being done, are removed), or an
    error if a decoder died without saying why (e.g. killed) or every one ended without a last message."""
    while conns:
        for ready in wait(conns, timeout=0.5):
            conn: Connection = ready  # type: ignore[assignment]  # wait() returns what it was given
            try:
                message: tuple[str, Any] = conn.recv()
                return message
            except EOFError:
                conns.remove(conn)
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            return "error", f"decoder process {dead[0].pid} exited with code {dead[0].exitcode}"
    return "error", "the decoder processes ended before the last batch"


def _write_outputs(workdir: str, n: int, outputs: Outputs) -> dict[str, str]:
    paths = {}
    for name, batch in outputs.items():
        paths[name] = os.path.join(workdir, f"{n}.{name}.arrow")
        with pa.OSFile(paths[name], "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
    return paths


def helper_for(queued: Sequence[int], live: bool) -> int | None:
    """The helper to decode the next batch (``queued``: the batches each holds), or None: the reader decodes it.

    The helper with the fewest; none while every one holds ``HELPER_QUEUE`` (it has the next one in reserve,
    so the reader's batch costs nobody a wait), except for a live capture, whose reader must get back to the ring.
    """
    if not queued:
        return None
    turn = min(range(len(queued)), key=queued.__getitem__)
    return turn if live or queued[turn] < HELPER_QUEUE else None


def _hand_over(workdir: str, n: int, ref: MappedFrames) -> str:
    """A batch's frame index (~3 MB), in a file: through the pipe, sending it would wait until the
    helper had finished its current batch and read it, so the helper could never hold a batch in reserve."""
    path = os.path.join(workdir, f"{n}.frames.pickle")
    with open(path, "wb") as f:
        pickle.dump(ref, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _take_over(path: str) -> MappedFrames:
    with open(path, "rb") as f:
        ref: MappedFrames = pickle.load(f)
    os.unlink(path)
    return ref


def _reader_main(source: FrameSource, transform: Transform | None, out: Connection, helpers: list[Connection],
                 slots: Semaphore, workdir: str, keep: FrameSink | None, decoder: Decoder,
                 decoded: Sequence[int]) -> None:
    """Reads every batch and hands it to a helper or decodes it here (:func:`helper_for`; ``decoded``: the
    batches each helper has finished).

    A helper gets a batch's frame index, not its bytes: it maps the same file.
    Batches of files that cannot be mapped (gzip) are decoded here.  A live
    source's reader decodes nothing: it must get back to the ring.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the consumer decides when to stop (Ctrl-C reaches us all)
    try:
        damages: list[Damage] = []
        n = 0
        sent = [0] * len(helpers)
        for frames, ref in source.batches(damages, workdir):
            slots.acquire()  # live: while decoders are this far behind, the ring fills (and the kernel counts drops)
            if ref is not None and (turn := helper_for([s - decoded[i] for i, s in enumerate(sent)],
                                                       source.live)) is not None:
                helpers[turn].send((n, _hand_over(workdir, n, ref)))
                sent[turn] += 1
                out.send(("helper", turn))
            else:
                outputs, stats = _decoded(frames, decoder, transform, keep)
                out.send(("batch", (_write_outputs(workdir, n, outputs), stats)))
            n += 1
        out.send(("done", damages))
    except BaseException:  # report everything, including KeyboardInterrupt, to the consumer
        out.send(("error", traceback.format_exc()))
    finally:
        for h in helpers:
            h.send(None)
            h.close()
        if keep is not None:
            keep.close()
        out.close()


def _helper_main(requests: Connection, out: Connection, transform: Transform | None, workdir: str,
                 keep: FrameSink | None, decoder: Decoder, decoded: MutableSequence[int], index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        mapper = FrameMapper()
        while (request := requests.recv()) is not None:
            n, path = request
            frames = mapper.attach(_take_over(path))
            outputs, stats = _decoded(frames, decoder, transform, keep)
            out.send(("batch", (_write_outputs(workdir, n, outputs), stats)))
            decoded[index] += 1  # this process alone writes it
            mapper.release(frames)
    except BaseException:
        out.send(("error", traceback.format_exc()))
    finally:
        if keep is not None:
            keep.close()
        out.close()


def _chunk_batches(chunked: list[PcapChunks], damages: list[Damage], transform: Transform | None, decoders: int,
                   in_flight: int, decoder: Decoder, chunk_transform: Transform | None = None
                   ) -> Iterator[tuple[Outputs, BatchStats] | None]:
    """Plain pcap files: ``decoders`` symmetric processes each take the next chunk, walk and decode it
    (:mod:`sensors.capture.chunks`), so no frame index crosses and each page is faulted in once; the
    chunks are taken in order here, each accepted only if its walk began where the previous one stopped
    (else it is read again here from there).  Yields None first, once its processes started.

    Chunks are handed out as the processes ask, not dealt in turn: with three busy processes on two cores
    the scheduler keeps one decoder on a core of its own and the other beside this process, and dealt
    chunks left the faster one idle for most of a chunk at the end while the other still decoded.
    """
    jobs = [(i, k) for i, chunks in enumerate(chunked) for k in range(len(chunks))]
    ctx = mp.get_context("fork")
    # a slot is taken before the chunk's number, so the lowest chunk not yet yielded always holds one: the
    # chunks decoded ahead of it can never take every slot
    slots = ctx.Semaphore(in_flight * decoders)
    taken = ctx.Value("q", 0)  # the next chunk to hand out
    workdir = tempfile.mkdtemp(prefix="liaowang-", dir=SHM_DIR)
    pipes = [ctx.Pipe(duplex=False) for _ in range(decoders)]
    procs = [ctx.Process(target=_chunk_main, daemon=True, args=(chunked, jobs, taken, tx, slots, workdir,
                                                                chunk_transform or transform, decoder))
             for _, tx in pipes]
    for p in procs:
        p.start()
    for _, tx in pipes:
        tx.close()
    finished = False
    try:
        yield None
        expected: dict[int, int] = {}  # per file: where its next chunk must begin
        damaged: set[int] = set()
        ready: dict[int, Any] = {}  # chunks decoded ahead of the next one, by number
        receiving = [rx for rx, _ in pipes]
        for j, (i, k) in enumerate(jobs):
            while j not in ready:
                kind, payload = _receive(receiving, procs)
                if kind != "chunk":
                    raise RuntimeError(f"decoder process failed:\n{payload}")
                ready[payload[0]] = payload[1:]
            start, next_start, damage, paths, stats = ready.pop(j)
            outputs = _read_outputs(paths or {})
            if i in damaged:  # the file's reading stopped at its damage
                slots.release()
                continue
            if start != expected.get(i, chunked[i].bounds(0)[0]):  # a false resynchronisation: read it here
                chunk = chunked[i].chunk(k, expected[i])
                next_start, damage = chunk.next_start, chunk.damage
                outputs, stats = _decoded(chunk.frames, decoder, transform) if chunk.frames is not None else ({}, None)
                chunked[i].release(k)
            elif stats is not None and chunk_transform is not None:
                stats.reread = functools.partial(_reread, chunked[i], k, start)
            expected[i] = next_start
            if damage is not None:
                damages.append(Damage(chunked[i].path, *damage))
                damaged.add(i)
            if stats is not None:
                yield outputs, stats
            del outputs
            slots.release()
        finished = True
    finally:
        _shut_down(procs, workdir, finished)


def _reread(chunks: PcapChunks, k: int, start: int) -> FrameBatch:
    """Chunk ``k``'s frames again, its walk beginning at ``start`` (its pages stay mapped here until the end)."""
    frames = chunks.chunk(k, start).frames
    assert frames is not None  # it had frames the first time
    return frames


def _chunk_main(chunked: list[PcapChunks], jobs: list[tuple[int, int]], taken: Any, out: Connection,
                slots: Semaphore, workdir: str, transform: Transform | None, decoder: Decoder) -> None:
    """One of :func:`_chunk_batches`' processes: the next chunk not taken, found by resynchronisation, until none is
    left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            slots.acquire()
            with taken.get_lock():
                n = taken.value
                taken.value = n + 1
            if n >= len(jobs):
                slots.release()
                break
            i, k = jobs[n]
            chunk = chunked[i].chunk(k)
            paths = stats = None
            if chunk.frames is not None:
                outputs, stats = _decoded(chunk.frames, decoder, transform)
                paths = _write_outputs(workdir, n, outputs)
            out.send(("chunk", (n, chunk.start, chunk.next_start, chunk.damage, paths, stats)))
            chunked[i].release(k)
    except BaseException:
        out.send(("error", traceback.format_exc()))
    finally:
        out.close()
