"""Live capture for real: captures replayed with tcpreplay onto a veth pair, captured by the AF_PACKET ring.

Every test makes its own pair of network namespaces (tests/netns.py), so the
sensor sees exactly what tcpreplay sent.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from console.app import create_app
from console.state import ConsoleState
from ingest.replay import replay
from ingest.store.api import Query
from ingest.store.duck import DuckStore
from sensors.capture.afpacket import AfPacketRing, CaptureOpenError, RingConfig, batch_capacity, fill_batch
from sensors.capture.live import LiveCapture, LiveOptions
from sensors.capture.retain import epb_blocks, retained_files
from sensors.capture.seal import Keyring, open_sealed, rotate_keyring
from sensors.capture.source import read_frames
from sensors.decode import decode
from sensors.schema import TunnelType
from tests import netns
from tests.conftest import PCAPS, ROOT, frame_tuples

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

#: Ethernet captures tcpreplay can send, short enough that replaying them at top speed changes no flow's
#: timeouts, with no 5-tuple in two of them (sample_of_http2 is left out: tcpreplay cannot read it)
WIRE_CAPTURES = [PCAPS / n for n in (
    "5g-attacks-clem272001_Dataset_2_capture2_nmap-port-service.pcap",
    "5g-attacks-clem272001_Dataset_2_capture2_pfcp_Deletion.pcap",
    "5greplay_oai.pcap",
    "5greplay_ue_authetication.pcapng",
    "arkime_diameter_synthetic.pcap",
    "arkime_gtp-u.pcap",
    "arkime_sctp-www.pcap",
    "ics-iti_ModbusTCP_ModbusTCP.pcap",
    "ics-iti_dnp3_cold_restart_and_response.pcap",
    "suricata-verify_bug-5713-01_TLSv1-Extracted-MaliciousC2.pcap",
    "suricata-verify_ssh-hassh_input.pcap",
    "telekom-5g-trace-visualizer_n3_example.pcap",
    "zeek_ftp_bruteforce.pcap",
    "zeek_ssh_sshguess.pcap",
    "zeek_tls_tls1.2.pcap",
    "zeek_tunnels_geneve.pcap",
    "zeek_tunnels_gre-sample.pcap",
    "zeek_tunnels_gtp_gtp1_gn_normal_incl_fragmentation.pcap",
    "zeek_tunnels_vxlan.pcap",
    "zeek_modbus_fuzz-72.pcap",
)]
#: columns that depend on when and from where a packet was read, not on its bytes
WHERE_AND_WHEN = {"ts", "file_index", "file_offset"}


@pytest.fixture
def wire(request: pytest.FixtureRequest) -> Iterator[netns.Wire]:
    w = netns.Wire.create(str(abs(hash(request.node.name)) % 10_000))
    yield w
    w.delete()


@pytest.fixture(scope="module")
def vlan_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """802.1Q and QinQ frames: the kernel strips the outer tag on receive; the ring reader must put it back."""
    from scapy.all import IP, TCP, UDP, Dot1Q, Ether, Raw, wrpcap

    frames = []
    for i in range(200):
        frames.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=100 + i % 3, prio=i % 8)
                      / IP(src="10.0.0.1", dst=f"10.0.0.{2 + i % 5}") / UDP(sport=1000 + i, dport=53)
                      / Raw(b"x" * (i % 50)))
        frames.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88A8) / Dot1Q(vlan=7, type=0x8100)
                      / Dot1Q(vlan=200) / IP(src="10.0.1.1", dst="10.0.1.2") / TCP(sport=1000 + i, dport=80))
        frames.append(Ether() / IP(src="10.0.2.1", dst="10.0.2.2") / UDP(sport=1000 + i, dport=2152))
    for j, f in enumerate(frames):
        f.time = 1_700_000_000 + j / 1000
    path = tmp_path_factory.mktemp("vlan") / "vlan.pcap"
    wrpcap(str(path), frames)
    return path


def _file_packets(paths: list[Path]) -> pa.Table:
    return pa.Table.from_batches([decode(b) for p in paths for b in read_frames(str(p))])


def _ring_packets(live: LiveCapture) -> pa.Table:
    live.stop.set()  # everything is in the ring already: read it all, then end
    batches = []
    for frames, _ in live.batches([]):
        batches.append(decode(frames))
        # retention writes a ring batch as one copy, the record headers' room turned into pcapng blocks
        segments, _offsets = epb_blocks(frames, np.zeros(len(frames), dtype=np.uint32))
        assert len(segments) == 1
    return pa.Table.from_batches(batches)


def _assert_same_packets(got: pa.Table, want: pa.Table) -> None:
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        if name not in WHERE_AND_WHEN:
            assert got.column(name).equals(want.column(name)), name


def test_ring_decodes_every_packet_as_the_file_does(wire: netns.Wire, vlan_capture: Path) -> None:
    files = [*WIRE_CAPTURES, vlan_capture]
    with netns.entered(wire.receiver_ns):
        live = LiveCapture(wire.receiver_if, LiveOptions(chunk_bytes=1 << 20))
    sent = wire.replay(*map(str, files))
    got = _ring_packets(live)
    assert sent.failed == 0 and got.num_rows == sent.packets
    assert live.counters.drops == 0 and live.counters.packets == sent.packets
    _assert_same_packets(got, _file_packets(files))
    # kernel timestamps: in order, and within the replay's span
    ts = got.column("ts").cast(pa.int64()).to_numpy()
    assert (ts[1:] >= ts[:-1]).all() and abs(ts[-1] / 1e9 - time.time()) < 60
    live.close()


def test_bpf_filter_keeps_only_matching_packets(wire: netns.Wire) -> None:
    files = [str(p) for p in WIRE_CAPTURES]
    expr = "udp port 2152 or sctp"
    with netns.entered(wire.receiver_ns):
        live = LiveCapture(wire.receiver_if, LiveOptions(ring=RingConfig(bpf_filter=expr)))
    wire.replay(*files)
    got = _ring_packets(live)
    want = sum(len(subprocess.run(["tcpdump", "-nn", "-r", f, expr], capture_output=True, text=True)
                   .stdout.splitlines()) for f in files)
    assert got.num_rows == want > 0
    for r in got.select(["tunnel_type", "ip_proto", "src_port", "dst_port"]).to_pylist():
        assert r["tunnel_type"] == TunnelType.GTPU or r["ip_proto"] == 132 or 2152 in (r["src_port"], r["dst_port"])
    live.close()


def test_bad_filter_and_missing_interface_are_clear_errors(wire: netns.Wire) -> None:
    from sensors.capture.bpf import FilterError

    with netns.entered(wire.receiver_ns):
        with pytest.raises(FilterError, match="syntax error"):
            AfPacketRing(wire.receiver_if, RingConfig(bpf_filter="udp portt 53"))
        with pytest.raises(CaptureOpenError, match="no such network interface"):
            AfPacketRing("lw-missing0")


def test_fanout_shares_packets_between_sockets_and_keeps_flows_whole(wire: netns.Wire) -> None:
    files = [WIRE_CAPTURES[i] for i in (0, 7, 13)]
    config = RingConfig(ring_bytes=32 << 20, fanout_group=4242)
    with netns.entered(wire.receiver_ns):
        rings = [AfPacketRing(wire.receiver_if, config) for _ in range(2)]
    sent = wire.replay(*map(str, files))
    tables = []
    for ring in rings:
        buf = np.zeros(batch_capacity(8 << 20, config), dtype=np.uint8)
        tables.append(decode(fill_batch(ring, buf, 8 << 20, 0.5)))
        ring.close()
    assert sum(t.num_rows for t in tables) == sent.packets
    assert all(t.num_rows for t in tables)  # both got a share

    def endpoints(t: pa.RecordBatch) -> set[tuple[str, ...]]:
        tcp_udp = t.filter(pc.is_valid(t.column("src_port")))
        return {tuple(sorted((f"{r['src_ip']}:{r['src_port']}", f"{r['dst_ip']}:{r['dst_port']}")))
                for r in tcp_udp.select(["src_ip", "dst_ip", "src_port", "dst_port"]).to_pylist()}

    assert not endpoints(tables[0]) & endpoints(tables[1])  # no connection split between the two


def test_kernel_drops_are_counted_when_the_ring_is_full(wire: netns.Wire) -> None:
    config = RingConfig(ring_bytes=2 * 132 * 1024, block_bytes=132 * 1024)
    with netns.entered(wire.receiver_ns):
        live = LiveCapture(wire.receiver_if, LiveOptions(ring=config, chunk_bytes=1 << 20))
    sent = wire.replay(str(PCAPS / "ics-iti_ModbusTCP_ModbusTCP.pcap"))  # nobody reads meanwhile: 15k packets
    got = _ring_packets(live)
    c = live.counters
    assert c.drops > 0 and c.freezes > 0
    assert got.num_rows + c.drops == sent.packets == c.packets
    live.close()


def _sensor(wire: netns.Wire, log: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(wire.in_receiver(sys.executable, "-m", "console.cli", "sensor", "--iface",
                                             wire.receiver_if, *args),
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while f"capturing on {wire.receiver_if} (" not in log.read_text():  # the capture is open
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def _flows_and_alerts(out: Path) -> tuple[collections.Counter[tuple[object, ...]], collections.Counter[tuple[object, ...]]]:
    flows = pq.read_table(out / "flows.parquet").select(
        ["src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "tunnel_type", "src2dst_packets", "dst2src_packets",
         "src2dst_bytes", "dst2src_bytes", "application_hint"])
    alerts = pq.read_table(out / "alerts.parquet").select(["rule_id", "level", "src_ip", "dst_ip"])
    return (collections.Counter(tuple(r.values()) for r in flows.to_pylist()),
            collections.Counter(tuple(r.values()) for r in alerts.to_pylist()))


def test_sensor_on_the_wire_finds_what_replay_finds_and_stores_it(wire: netns.Wire, tmp_path: Path) -> None:
    out, store, kept, keys = tmp_path / "live", tmp_path / "store", tmp_path / "kept", tmp_path / "evidence.keys"
    rotate_keyring(keys)
    proc = _sensor(wire, tmp_path / "sensor.log", "--out", str(out), "--store", str(store), "--sensor-id", "tap-1",
                   "--retain", str(kept), "--retain-file-mb", "0.5", "--chunk-mb", "0.25",
                   "--evidence-keyring", str(keys))
    sent = wire.replay(*map(str, WIRE_CAPTURES))
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # graceful: all that was captured is processed first
    assert proc.wait(60) == 0, (tmp_path / "sensor.log").read_text()
    summary = (tmp_path / "sensor.log").read_text()
    assert f"packets            {sent.packets:,}" in summary and "dropped 0" in summary

    flows, alerts = collections.Counter[tuple[object, ...]](), collections.Counter[tuple[object, ...]]()
    for i, f in enumerate(WIRE_CAPTURES):  # each file on its own: replay starts a timeline per file
        replay([str(f)], tmp_path / f"replay-{i}")
        f_flows, f_alerts = _flows_and_alerts(tmp_path / f"replay-{i}")
        flows.update(f_flows)
        alerts.update(f_alerts)
    live_flows, live_alerts = _flows_and_alerts(out)
    assert live_flows == flows
    assert live_alerts == alerts and sum(alerts.values()) >= 10

    with DuckStore(store) as s:
        stats = s.search(Query("sensor_stats", limit=10_000)).rows
        assert {r["sensor"] for r in stats} == {"tap-1"} and {r["source"] for r in stats} == {wire.receiver_if}
        assert sum(r["packets"] for r in stats) == sent.packets and sum(r["drops"] for r in stats) == 0
        assert s.search(Query("flows", limit=0)).total == sum(flows.values())
        assert s.search(Query("alerts", limit=0)).total == sum(alerts.values())
        assert {r["evidence"] for r in stats} == {str(kept)}
        _assert_flows_served_from_retained_packets(s, kept, Keyring.from_file(keys), tmp_path)


def _assert_flows_served_from_retained_packets(store: DuckStore, kept: Path, keyring: Keyring, tmp_path: Path
                                               ) -> None:
    """Every packet was kept, sealed, in rotated files; the console serves a flow's packets from them."""
    files = retained_files(kept)
    assert len(files) > 2 and all(f.last_ns is not None and f.sealed for f in files)
    sent = collections.Counter(f[3] for f in frame_tuples(WIRE_CAPTURES))
    plain = []
    for i, f in enumerate(files):
        plain.append(tmp_path / f"plain-{i}.pcapng")
        plain[-1].write_bytes(b"".join(open_sealed(f.path, keyring)))
    assert collections.Counter(f[3] for f in frame_tuples(plain)) == sent

    state = ConsoleState(tmp_path / "console")
    state.add_user("ana", "ana-password-1", "viewer")
    flows = store.search(Query("flows", limit=10_000, sort="-bidirectional_packets")).rows
    keyless = TestClient(create_app(store, state))
    assert keyless.post("/api/login", json={"username": "ana", "password": "ana-password-1"}).status_code == 200
    denied = keyless.get(f"/api/flows/{flows[0]['flow_id']}/pcap")
    assert denied.status_code == 503 and "encrypted" in denied.json()["detail"]
    client = TestClient(create_app(store, state, evidence_keyring=keyring))
    assert client.post("/api/login", json={"username": "ana", "password": "ana-password-1"}).status_code == 200
    sample = flows[:20] + flows[20::25]
    assert {f["tunnel_type"] for f in sample} >= {"gtpu", None}
    for flow in sample:
        r = client.get(f"/api/flows/{flow['flow_id']}/pcap")
        assert r.status_code == 200, (flow, r.text)
        path = tmp_path / "flow.pcap"
        path.write_bytes(r.content)
        got = frame_tuples([path])
        assert len(got) == flow["bidirectional_packets"] and sum(g[1] for g in got) == flow["bidirectional_bytes"]
        assert all(sent[g[3]] for g in got)


def test_sensor_errors_say_what_is_missing(wire: netns.Wire, tmp_path: Path) -> None:
    def run(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "console.cli", "sensor", *args]
        if user:
            cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", *cmd]
        return subprocess.run(wire.in_receiver(*cmd), cwd=ROOT, capture_output=True, text=True, timeout=60)

    missing = run("--iface", "nope0", "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope0: no such network interface" in missing.stderr
    bad = run("--iface", wire.receiver_if, "--out", str(tmp_path / "o"), "--filter", "tcp portt 80")
    assert bad.returncode == 2 and "capture filter 'tcp portt 80'" in bad.stderr
    nowhere = run("--iface", wire.receiver_if)
    assert nowhere.returncode == 2 and "--out DIR" in nowhere.stderr
    unprivileged = run("--iface", wire.receiver_if, "--out", str(tmp_path / "o"), user="nobody")
    assert unprivileged.returncode == 2 and "CAP_NET_RAW" in unprivileged.stderr


def test_pcap_engine_reads_tcpdumps_stream_the_same(wire: netns.Wire) -> None:
    files = WIRE_CAPTURES[:8]
    live = LiveCapture(wire.receiver_if, LiveOptions(engine="pcap", chunk_bytes=1 << 20, max_wait_s=0.2))
    tables: list[pa.RecordBatch] = []

    def capture() -> None:
        with netns.entered(wire.receiver_ns):  # tcpdump starts in this thread's namespace
            tables.extend(decode(frames) for frames, _ in live.batches([]))

    reader = threading.Thread(target=capture)
    reader.start()
    assert live.ready.wait(30)
    sent = wire.replay(*map(str, files))
    time.sleep(0.5)
    live.stop.set()
    reader.join(30)
    _assert_same_packets(pa.Table.from_batches(tables), _file_packets(files))
    assert live.counters.packets == sent.packets and live.counters.drops == 0


def test_scapy_engine_works_slowly_and_says_so(wire: netns.Wire, tmp_path: Path) -> None:
    log = tmp_path / "sensor.log"
    proc = _sensor(wire, log, "--engine", "scapy", "--out", str(tmp_path / "o"), "--batch-ms", "200")
    sent = wire.replay(str(WIRE_CAPTURES[17]), pps=500)  # 108 packets, gently
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "drops most packets above a few thousand per second" in text
    assert f"packets            {sent.packets:,}" in text


def test_sensor_streams_the_wire_through_kafka(tmp_path: Path) -> None:
    from tests.kafka_fixtures import Broker, liaowang, stop, stored, wait_log, wait_stored

    files = [WIRE_CAPTURES[i] for i in (1, 7, 9, 13)]
    for i, f in enumerate(files):
        replay([str(f)], tmp_path / f"replay-{i}")
    want = [sum(pq.read_metadata(tmp_path / f"replay-{i}" / f"{t}.parquet").num_rows for i in range(len(files)))
            for t in ("flows", "alerts")]
    wire = netns.Wire.create(f"k{abs(hash(str(tmp_path))) % 1000}", receiver_here=True)  # the broker is on loopback
    broker = Broker(tmp_path)
    broker.start()
    procs = []
    try:
        store = tmp_path / "store"
        procs.append(liaowang("detect", "--kafka", broker.bootstrap, "--group", "g", "--store", str(store),
                              "--topic-prefix", "live", "--commit-interval", "0.5", log=tmp_path / "w.log"))
        wait_log([tmp_path / "w.log"], "assigned", procs)
        procs.append(liaowang("sensor", "--iface", wire.receiver_if, "--kafka", broker.bootstrap, "--topic-prefix",
                              "live", "--sensor-id", "tap-k", "--spool", str(tmp_path / "spool"),
                              log=tmp_path / "sensor.log"))
        wait_log([tmp_path / "sensor.log"], f"capturing on {wire.receiver_if} (", procs)
        sent = wire.replay(*map(str, files))
        time.sleep(0.3)
        assert stop(procs[1], timeout=60) == 0, (tmp_path / "sensor.log").read_text()
        assert f"{sent.packets:,} packets" in (tmp_path / "sensor.log").read_text()
        wait_stored(store, want[0], want[1], procs[:1])
        assert stop(procs[0]) == 0
        flows, alerts = stored(store)
        assert (flows.num_rows, alerts.num_rows) == tuple(want)
        assert int(pc.sum(flows.column("src2dst_packets")).as_py() + pc.sum(flows.column("dst2src_packets")).as_py()) \
            <= sent.packets
    finally:
        for p in procs:
            stop(p, timeout=5)
        broker.stop()
        wire.delete()
