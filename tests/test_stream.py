"""Streaming through Kafka (ingest/stream/): the same flows and alerts as replay, through faults.

In-process tests check the pieces (codec, spool, partitioned stages); the
rest run `liaowang sensor` and `liaowang detect` as processes against a real
Kafka-protocol broker (tansu, started here) and compare the store with a
replay of the same captures.
"""

from __future__ import annotations

import os
import re
import struct
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ingest.control import ControlPlane
from ingest.detect import DetectStage, build_engine
from ingest.pipeline import FlowStage, Part, sensor_parts, split
from ingest.privacy import Pseudonymizer
from ingest.replay import replay
from ingest.stream.codec import CorruptMessage, Envelope, decode, encode
from ingest.stream.spool import Outbox
from sensors.capture.source import CaptureFiles, expand_inputs, order_by_time
from sensors.generate.mixed import generate
from tests.conftest import PCAPS
from tests.kafka_fixtures import Broker, free_port, liaowang, stop, stored, wait_log, wait_stored
from tests.tls_fixtures import TlsProxy, self_signed

KEY = "stream-tests"
CHUNK = 1 << 20  # 1 MiB batches: the bundled captures make ~40 of them
SHARED = PCAPS
# every column replay writes must come out the same


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIAOWANG_PSEUDONYM_KEY", KEY)


def _reference(inputs: list[str], out: Path) -> tuple[pa.Table, pa.Table]:
    os.environ["LIAOWANG_PSEUDONYM_KEY"] = KEY
    replay(inputs, out, chunk_bytes=CHUNK)
    return pq.read_table(out / "flows.parquet"), pq.read_table(out / "alerts.parquet")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pa.Table]:
    """Replay of the bundled captures: what every streamed run must reproduce."""
    return _reference([str(SHARED)], tmp_path_factory.mktemp("reference"))


def _same(ref: pa.Table, got: pa.Table, key: str) -> None:
    cols = ref.column_names
    a = _plain(ref.sort_by(key)).to_pylist()
    b = _plain(got.select(cols).cast(ref.schema).sort_by(key)).to_pylist()
    assert len(a) == len(b), f"{len(a)} rows in replay, {len(b)} streamed"
    missing = {r[key] for r in a} - {r[key] for r in b}
    assert not missing, f"not streamed: {sorted(missing)[:5]}"
    for x, y in zip(a, b):
        assert x == y, f"{key} {x[key]} differs: " + ", ".join(f"{c}: {x[c]!r} != {y[c]!r}"
                                                               for c in cols if x[c] != y[c])


def _plain(t: pa.Table) -> pa.Table:
    """ns timestamps as integers (Python datetimes cannot hold them)."""
    return pa.table({f.name: t[f.name].cast(pa.int64()) if pa.types.is_timestamp(f.type) else t[f.name]
                     for f in t.schema})


# -- in process: the pieces -------------------------------------------------------------------


def test_partitioned_stages_equal_replay(reference: tuple[pa.Table, pa.Table]) -> None:
    """Split into 3 partitions with a flow table each, merged for detection: replay's flows and alerts."""
    files = order_by_time(expand_inputs([str(SHARED)]))
    detect = DetectStage(build_engine(), ControlPlane())
    stages = [FlowStage() for _ in range(3)]
    flows, alerts, clock, seq = [], [], None, 0
    for part, _ in sensor_parts(CaptureFiles(files, CHUNK), build_engine(), Pseudonymizer(KEY.encode())):
        parts, clock = split(part, 3, clock)
        seq = part.seq + 1
        # through the codec, as on Kafka
        parts = [decode(encode(Envelope("s", "r", p))).part for p in parts]  # type: ignore[misc]
        r = detect.update([stages[p.partition].update(p) for p in parts])
        flows.append(r.flows)
        alerts.append(r.alerts)
    r = detect.update([s.update(Part(seq=seq, partition=i, partitions=3, end=True)) for i, s in enumerate(stages)])
    flows.append(r.flows)
    alerts.append(r.alerts)
    ref_flows, ref_alerts = reference
    assert ref_flows.num_rows > 1000 and ref_alerts.num_rows > 10
    assert sum(s.flows.flows_exported for s in stages) == ref_flows.num_rows
    assert all(s.flows.flows_exported for s in stages)  # every partition had flows
    _same(ref_flows, pa.concat_tables(flows), "flow_id")
    _same(ref_alerts, pa.concat_tables(alerts), "alert_id")


def test_codec_round_trip_and_corruption() -> None:
    files = order_by_time(expand_inputs([str(SHARED / "arkime_gtp-u.pcap")]))
    part, _ = next(sensor_parts(CaptureFiles(files), build_engine(), Pseudonymizer(b"k"), processes=1))
    parts, _ = split(part, 2, None)
    env = Envelope("sensor-1", "run-1", parts[0], "abc")
    data = encode(env)
    back = decode(data)
    assert (back.sensor, back.run, back.rules, back.stream) == ("sensor-1", "run-1", "abc", "sensor-1/run-1")
    assert isinstance(back.part, Part) and back.part.keyed is not None and parts[0].keyed is not None
    assert back.part.keyed.equals(pa.Table.from_batches([parts[0].keyed]) if isinstance(parts[0].keyed, pa.RecordBatch)
                                  else parts[0].keyed)
    assert back.part.batch == parts[0].batch and back.part.clock_ns == parts[0].clock_ns
    for bad in (b"", b"garbage", data[:-7], data[:4] + b"\xff" + data[5:], data + b"x"):
        with pytest.raises(CorruptMessage):
            decode(bad)


def test_outbox_spills_in_order_and_drops_when_full(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "spool", max_spool_bytes=3 * 1024, max_memory_batches=2, block=False)
    blob = b"x" * 1000
    accepted = [box.put(i, [(0, blob), (1, blob[:10])], packets=5) for i in range(8)]
    # 2 in memory, 2 on disk (~1 KiB each), then full
    assert accepted == [True, True, True, True, False, False, False, False]
    assert box.stats.spooled == 2 and box.stats.dropped_batches == 4 and box.stats.dropped_packets == 20
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 2
    got = []
    for _ in range(4):
        item = box.peek(timeout=1)
        assert item is not None
        got.append(item[0])
        assert item[1] == [(0, blob), (1, blob[:10])]
        box.pop()
    assert got == [0, 1, 2, 3]
    assert box.put(9, [(0, b"y")])  # memory again, now that the disk is empty
    # a new outbox over the same directory delivers what an earlier run left on disk first
    box2 = Outbox(tmp_path / "spool", max_memory_batches=0)
    box2.put(10, [(0, b"a")])
    box3 = Outbox(tmp_path / "spool")
    first = box3.peek(timeout=1)
    assert first is not None and first[0] == 10


# -- through a real broker ----------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()
    for p in _started:  # whatever a failing test left running
        stop(p, timeout=5)
    _started.clear()


_started: list = []


def _run(*args: str, log: Path) -> object:
    p = liaowang(*args, log=log)
    _started.append(p)
    return p


def _workers(broker: Broker, store: Path, tmp: Path, n: int = 2, prefix: str = "t") -> list:
    procs = [_run("detect", "--kafka", broker.bootstrap, "--group", "g", "--store", str(store),
                      "--topic-prefix", prefix, "--commit-interval", "0.5", "--name", f"w{i}",
                      log=tmp / f"w{i}.log") for i in range(n)]
    wait_log([tmp / f"w{i}.log" for i in range(n)], "assigned", procs)
    return procs


def _sensor(broker: Broker, inputs: list[str], tmp: Path, *extra: str, prefix: str = "t") -> object:
    return _run("sensor", "--pcap", *inputs, "--kafka", broker.bootstrap, "--sensor-id", "tap-1",
                    "--topic-prefix", prefix, "--spool", str(tmp / "spool"), "--chunk-mb", str(CHUNK / 2**20),
                    *extra, log=tmp / "sensor.log")


def test_sensor_to_two_workers_equals_replay(broker: Broker, tmp_path: Path,
                                             reference: tuple[pa.Table, pa.Table]) -> None:
    store = tmp_path / "store"
    workers = _workers(broker, store, tmp_path)
    try:
        sensor = _sensor(broker, [str(SHARED)], tmp_path, "--metrics-port", "0")
        assert sensor.wait(120) == 0, (tmp_path / "sensor.log").read_text()  # type: ignore[attr-defined]
        ref_flows, ref_alerts = reference
        wait_stored(store, ref_flows.num_rows, ref_alerts.num_rows, workers)
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0]
    flows, alerts = stored(store)
    _same(ref_flows, flows, "flow_id")
    _same(ref_alerts, alerts, "alert_id")
    # both workers did flow work: the packets topic's partitions were shared
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all(re.search(r"assigned .*packets\[\d\]", log) for log in logs), logs
    assert "delivered" in (tmp_path / "sensor.log").read_text()


def test_killed_worker_is_taken_over(broker: Broker, tmp_path: Path, reference: tuple[pa.Table, pa.Table]) -> None:
    """kill -9 the worker that runs detection mid-stream: the other resumes from its checkpoint."""
    store = tmp_path / "store"
    workers = _workers(broker, store, tmp_path)
    try:
        sensor = _sensor(broker, [str(SHARED)], tmp_path, "--pps", "5000")  # ~8 s of traffic
        time.sleep(4)
        logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
        victim = next(i for i, log in enumerate(logs) if "flows[0]" in log)
        workers[victim].kill()
        assert sensor.wait(120) == 0  # type: ignore[attr-defined]
        ref_flows, ref_alerts = reference
        wait_stored(store, ref_flows.num_rows, ref_alerts.num_rows, [workers[1 - victim]])
    finally:
        for w in workers:
            stop(w)
    flows, alerts = stored(store)
    _same(ref_flows, flows, "flow_id")
    _same(ref_alerts, alerts, "alert_id")
    survivor = (tmp_path / f"w{1 - victim}.log").read_text()
    assert survivor.count("assigned") >= 2 and "flows[0]" in survivor.split("assigned")[-1]


def _shift_pcap(src: Path, dst: Path, seconds: int) -> None:
    data = bytearray(src.read_bytes())
    pos = 24
    while pos + 16 <= len(data):
        ts, _, incl, _ = struct.unpack_from("<IIII", data, pos)
        struct.pack_into("<I", data, pos, ts + seconds)
        pos += 16 + incl
    dst.write_bytes(bytes(data))


def test_broker_outage_spools_then_drains(broker: Broker, tmp_path: Path) -> None:
    """The broker is down for the sensor's first 10 s: batches spool to disk, then drain in order.

    (The test broker keeps nothing across a restart, so it is down before any
    data reached it; with Apache Kafka a restart loses nothing either way.)
    """
    caps = tmp_path / "caps"
    caps.mkdir()
    generate(caps / "a.pcap", 3000, seed=3, duration_s=2.0)
    generate(tmp_path / "b0.pcap", 3000, seed=4, duration_s=2.0)
    _shift_pcap(tmp_path / "b0.pcap", caps / "b.pcap", 30)
    ref_flows, ref_alerts = _reference([str(caps)], tmp_path / "ref")
    store = tmp_path / "store"
    broker.stop()
    sensor = _sensor(broker, [str(caps)], tmp_path, "--speed", "4")  # b.pcap ~8 s in, paced like a tap
    time.sleep(10)
    assert sensor.poll() is None  # type: ignore[attr-defined]
    spooled = list((tmp_path / "spool").glob("*.spool"))
    assert len(spooled) >= 3, "batches were not spooled to disk"
    broker.start()
    workers = _workers(broker, store, tmp_path)
    try:
        assert sensor.wait(120) == 0, (tmp_path / "sensor.log").read_text()  # type: ignore[attr-defined]
        wait_stored(store, ref_flows.num_rows, ref_alerts.num_rows, workers, timeout=90)
    finally:
        for w in workers:
            stop(w)
    log = (tmp_path / "sensor.log").read_text()
    assert ", 0 dropped" in log and re.search(r"7 delivered, [3-9] spooled", log), log
    assert not list((tmp_path / "spool").glob("*.spool"))
    flows, alerts = stored(store)
    _same(ref_flows, flows, "flow_id")
    _same(ref_alerts, alerts, "alert_id")


def test_poison_message_goes_to_dead_letter(broker: Broker, tmp_path: Path) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from ingest.stream.topics import Topics, ensure_topics

    topics = Topics("p", 4)
    ensure_topics(broker.bootstrap, topics)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], enable_idempotence=False)
    producer.send(topics.packets, value=b"LWP\x01\x00\x00\x00\x05{not json", partition=1).get(10)
    producer.send(topics.packets, value=b"\x00" * 64, partition=2).get(10)
    producer.close()
    inputs = [str(SHARED / "arkime_gtp-u.pcap"), str(SHARED / "5greplay_oai.pcap")]
    ref_flows, ref_alerts = _reference(inputs, tmp_path / "ref")
    store = tmp_path / "store"
    workers = _workers(broker, store, tmp_path, n=1, prefix="p")
    try:
        sensor = _sensor(broker, inputs, tmp_path, prefix="p")
        assert sensor.wait(60) == 0  # type: ignore[attr-defined]
        wait_stored(store, ref_flows.num_rows, ref_alerts.num_rows, workers)
        assert workers[0].poll() is None  # still running
    finally:
        stop(workers[0])
    log = (tmp_path / "w0.log").read_text()
    assert re.search(r"dead-letter: p\.packets\[1\] offset 0: .*JSON", log, re.I), log
    assert "dead-letter: p.packets[2] offset 0: not a Liaowang part" in log
    consumer = KafkaConsumer(topics.dead_letter, bootstrap_servers=[broker.bootstrap], auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    dead = [(m.value, dict(m.headers)) for m in consumer]
    consumer.close()
    assert sorted(v[:4] for v, _ in dead) == [b"\x00" * 4, b"LWP\x01"]
    assert {h["liaowang.partition"] for _, h in dead} == {b"1", b"2"}
    flows, alerts = stored(store)
    _same(ref_flows, flows, "flow_id")
    _same(ref_alerts, alerts, "alert_id")


def test_sensor_and_worker_speak_tls_to_the_broker(tmp_path: Path, reference: tuple[pa.Table, pa.Table]) -> None:
    """With LIAOWANG_KAFKA_SECURITY=SSL every client verifies the broker's certificate; results are unchanged."""
    cert, key = self_signed(tmp_path / "tls")
    proxy_port = free_port()
    broker = Broker(tmp_path, advertised_port=proxy_port)
    broker.start()
    proxy = TlsProxy(cert, key, proxy_port, broker.port)
    env = {"LIAOWANG_KAFKA_SECURITY": "SSL", "LIAOWANG_KAFKA_CA": str(cert)}
    store = tmp_path / "store"
    procs = []
    try:
        procs.append(liaowang("detect", "--kafka", broker.bootstrap, "--group", "g", "--store", str(store),
                              "--topic-prefix", "tls", "--commit-interval", "0.5", log=tmp_path / "w.log", env=env))
        wait_log([tmp_path / "w.log"], "assigned", procs)
        sensor = liaowang("sensor", "--pcap", str(SHARED), "--kafka", broker.bootstrap, "--sensor-id", "tap-1",
                          "--topic-prefix", "tls", "--spool", str(tmp_path / "spool"), "--chunk-mb",
                          str(CHUNK / 2**20), log=tmp_path / "sensor.log", env=env)
        procs.append(sensor)
        assert sensor.wait(120) == 0, (tmp_path / "sensor.log").read_text()
        ref_flows, ref_alerts = reference
        wait_stored(store, ref_flows.num_rows, ref_alerts.num_rows, procs[:1])
    finally:
        for p in procs:
            stop(p, timeout=10)
        proxy.close()
        broker.stop()
    flows, alerts = stored(store)
    _same(ref_flows, flows, "flow_id")
    assert proxy.handshakes >= 2  # both processes came through TLS (the broker listens nowhere else to them)


def test_kafka_security_settings_are_checked_before_connecting() -> None:
    from ingest.stream.topics import security_settings

    assert security_settings({}) == {"security_protocol": "PLAINTEXT"}
    sasl = security_settings({"LIAOWANG_KAFKA_SECURITY": "sasl_ssl", "LIAOWANG_KAFKA_USER": "sensor-1",
                              "LIAOWANG_KAFKA_PASSWORD": "pw"})
    assert sasl["sasl_mechanism"] == "SCRAM-SHA-512" and sasl["ssl_check_hostname"] is True
    for env, said in (({"LIAOWANG_KAFKA_SECURITY": "TLS"}, "one of PLAINTEXT"),
                      ({"LIAOWANG_KAFKA_SECURITY": "SSL", "LIAOWANG_KAFKA_CA": "/nonexistent.pem"}, "no such file"),
                      ({"LIAOWANG_KAFKA_SECURITY": "SASL_SSL"}, "needs LIAOWANG_KAFKA_USER")):
        with pytest.raises(ValueError, match=said):
            security_settings(env)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "console.cli"]
    r = subprocess.run([*run, "sensor", "--pcap", str(SHARED)], capture_output=True, text=True,
                       env={**os.environ, "LIAOWANG_KAFKA": ""})
    assert r.returncode == 2 and "give --kafka" in r.stderr
    r = subprocess.run([*run, "sensor", "--pcap", str(tmp_path / "none.pcap"), "--kafka", "127.0.0.1:1",
                        "--spool", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "none.pcap" in r.stderr
    r = subprocess.run([*run, "detect", "--kafka", "127.0.0.1:1"], capture_output=True, text=True,
                       env={**os.environ, "LIAOWANG_STORE": ""})
    assert r.returncode == 2 and "give --store" in r.stderr
    r = subprocess.run([*run, "detect", "--kafka", "127.0.0.1:1", "--store", str(tmp_path / "st")],
                       capture_output=True, text=True, env={**os.environ, "LIAOWANG_KAFKA_SECURITY": "SASL_SSL"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "LIAOWANG_KAFKA_USER" in r.stderr


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: its !override and !reset tags keep their values."""


_ComposeLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_sequence(node)
                                     if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node))


def test_compose_file_runs_only_commands_the_cli_accepts() -> None:
    """docker-compose.yml cannot run here (no Docker engine): check every Liaowang command it runs parses,
    that the scale-out services exist, and `docker compose config` accepts it where the CLI exists."""
    import shutil
    import subprocess

    import yaml

    from console.cli import build_parser

    root = PCAPS.parent.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "sensor", "detect", "elasticsearch", "kibana", "console"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["elasticsearch"]
    parser = build_parser()
    env = {"LIAOWANG_SENSOR_PPS": "20000"}
    commands = 0
    for name, svc in services.items():
        if svc.get("image") != "liaowang:latest":
            continue
        argv = [re.sub(r"\$\{(\w+):-[^}]*\}", lambda m: env.get(m.group(1), "1"), a) for a in svc["command"]]
        args = parser.parse_args(argv)
        commands += 1
        if args.command in ("sensor", "detect") and not getattr(args, "out", None):  # not an embedded live sensor
            environment = svc.get("environment") or {}
            assert environment.get("LIAOWANG_KAFKA") == "kafka:9092", name
    assert commands >= 5
    # the secure overlay (docker-compose.secure.yml): its commands parse too, every Kafka client gets TLS
    secure = yaml.load((root / "docker-compose.secure.yml").read_text(), Loader=_ComposeLoader)
    for name, svc in secure["services"].items():
        if "command" in svc:
            argv = [re.sub(r"\$\{(\w+):-[^}]*\}", lambda m: env.get(m.group(1), "1"), a) for a in svc["command"]]
            parser.parse_args(argv)
        if name in ("sensor", "detect"):
            assert svc["environment"]["LIAOWANG_KAFKA_SECURITY"] == "SASL_SSL", name
    has_compose = shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                           capture_output=True).returncode == 0
    if has_compose:
        r = subprocess.run(["docker", "compose", "-f", str(root / "docker-compose.yml"), "config", "-q"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
