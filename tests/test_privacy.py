"""No raw subscriber identity leaves the sensor: replay captures that carry IMSIs, SUPIs, MSISDNs, IMEIs,
mobile and identity numbers, then search every output (Parquet, eve.json, the DuckDB store, the logs) for
the raw values, and find none; the pseudonyms still correlate."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.privacy import Pseudonymizer
from sensors.protocols.pii import find
from tests.conftest import PCAPS, ROOT

#: planted in the generated capture (the resident ID's check digit is valid)
PHONE, RESIDENT_ID, CN_IMSI, MSISDN, IMEI = "13812345678", "110105199003071239", "460001234567890", "8613912345678", \
    "353490069873319"
N4_IMSI, N4_IMEI = "460007654321098", "358240051111110"  # in a PFCP User ID IE
#: bundled captures whose signalling carries identities (GTPv2-C, GTPv1, NAS, SBI, Diameter)
SIGNALLING = ["5g-attacks-clem272001_Dataset_2_capture_pdn.pcap", "zeek_tunnels_gtp_pdp_ctx_messages.pcapng",
              "arkime_diameter_synthetic.pcap", "telekom-5g-trace-visualizer_free5gc.pcap", "5greplay_oai.pcap",
              "5greplay_ue_authetication.pcapng"]


def planted(path: Path) -> Path:
    """Identities in wire text (HTTP, DNS, FTP, SBI-style paths) and in GTPv2-C IEs."""
    from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, Raw, wrpcap
    from scapy.contrib.gtp_v2 import IE_IMSI, IE_MEI, IE_MSISDN, GTPHeader, GTPV2CreateSessionRequest

    def tbcd(digits: str) -> bytes:
        padded = digits + "f" * (len(digits) % 2)
        return bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, len(padded), 2))

    def pfcp_establishment(imsi: str, imei: str) -> bytes:
        """Session Establishment Request (TS 29.244 7.5.2) with Node ID, F-SEID and a User ID IE (8.2.101)."""
        user = bytes([0x03, 8]) + tbcd(imsi) + bytes([8]) + tbcd(imei)
        ies = (struct.pack("!HHB4s", 60, 5, 0, bytes([10, 9, 0, 5])) + struct.pack("!HHBQ4s", 57, 13, 2, 77,
                                                                                     bytes([10, 9, 0, 5]))
               + struct.pack("!HH", 141, len(user)) + user)
        return struct.pack("!BBHQI", 0x21, 50, 12 + len(ies), 0, 7 << 8) + ies

    def tcp(sport: int, dport: int, payload: bytes) -> Ether:
        return Ether() / IP(src="10.9.0.2", dst="10.9.0.1") / TCP(sport=sport, dport=dport, flags="PA") / Raw(payload)

    frames = [
        tcp(40001, 80, f"GET /api/user?phone={PHONE}&id={RESIDENT_ID} HTTP/1.1\r\nHost: crm.example\r\n"
                       f"User-Agent: app/1.0 ({CN_IMSI})\r\n\r\n".encode()),
        tcp(40002, 80, f"GET /nudm-sdm/v2/imsi-{CN_IMSI}/am-data HTTP/1.1\r\nHost: udm.example\r\n\r\n".encode()),
        tcp(40003, 21, f"USER {PHONE}\r\n".encode()),
        Ether() / IP(src="10.9.0.2", dst="10.9.0.53") / UDP(sport=40004, dport=53)
        / DNS(rd=1, qd=DNSQR(qname=f"{PHONE}.msisdn.example")),
        Ether() / IP(src="10.9.0.3", dst="10.9.0.4") / UDP(sport=2123, dport=2123)
        / GTPHeader(gtp_type=32, seq=1, teid=0) / GTPV2CreateSessionRequest(IE_list=[
            IE_IMSI(IMSI=CN_IMSI), IE_MSISDN(digits=MSISDN), IE_MEI(MEI=IMEI)]),
        Ether() / IP(src="10.9.0.5", dst="10.9.0.6") / UDP(sport=8805, dport=8805)
        / Raw(pfcp_establishment(N4_IMSI, N4_IMEI)),
    ]
    for i, f in enumerate(frames):
        f.time = 1_750_000_000 + i
    wrpcap(str(path), frames)
    return path


def raw_identities(paths: list[Path]) -> set[str]:
    """What a real dissector (tshark) reads in the captures (IMSIs, MSISDNs, IMEIs), and SUPIs in SBI paths."""
    found = {PHONE, RESIDENT_ID, CN_IMSI, MSISDN, IMEI, N4_IMSI, N4_IMEI}
    for p in paths:
        out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-E", "separator=\n", "-e", "e212.imsi",
                              "-e", "e164.msisdn", "-e", "gsm_a.imei", "-e", "gtpv2.mei", "-e", "http2.header.value",
                              "-e", "diameter.User-Name"], capture_output=True, text=True, check=True).stdout
        for value in out.split():
            found.update(re.findall(r"(?<![0-9])[0-9]{11,15}(?![0-9])", value))
        found.update(m.decode() for m in re.findall(rb"imsi-([0-9]{11,15})", p.read_bytes()))  # SBI paths in clear
    return {v for v in found if len(v) >= 11}


def test_no_raw_identity_in_any_output(tmp_path: Path) -> None:
    captures = [planted(tmp_path / "planted.pcap"), *(PCAPS / n for n in SIGNALLING)]
    raw = raw_identities(captures)
    assert {"999700000000001", "2089300007487", "310260123456789", "46702123456"} <= raw  # tshark saw them
    out, store = tmp_path / "out", tmp_path / "store"
    run = subprocess.run([sys.executable, "-m", "console.cli", "replay", *map(str, captures), "--out", str(out),
                          "--store", str(store)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    texts = {"logs": run.stdout + run.stderr}
    for path in [*out.rglob("*"), *store.rglob("*")]:
        if path.suffix == ".parquet":
            texts[str(path)] = _text(pq.read_table(path))
        elif path.suffix in (".json", ".jsonl", ".log", ".txt", ".csv"):
            texts[str(path)] = path.read_text(errors="replace")
    databases = [p for p in store.rglob("*.duckdb")]
    assert databases
    for db in databases:
        con = duckdb.connect(str(db), read_only=True)
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            texts[f"{db}:{table}"] = _text(con.sql(f'SELECT * FROM "{table}"').to_arrow_table())
        con.close()
    assert sum(len(t) for t in texts.values()) > 1_000_000  # the outputs are there to search
    # as text, and as the BCD bytes signalling carries them in (binary columns are searched as hex)
    forms = {value: (value, _tbcd_hex(value)) for value in raw}
    leaks = {(where, value) for where, text in texts.items() for value in raw if any(f in text for f in forms[value])}
    assert not leaks

    # what was found is still there, as tokens that correlate
    key = Pseudonymizer.for_output(out)
    flows = _text(pq.read_table(out / "flows.parquet"))
    assert key.subscriber("86" + PHONE, "msisdn") in flows  # the DNS name, as the flow's server name
    gtpc = pq.read_table(out / "proto_gtpc.parquet").to_pylist()
    assert {r["imsi"] for r in gtpc} >= {key.subscriber(CN_IMSI, "imsi")}
    pfcp = [r for r in pq.read_table(out / "proto_pfcp.parquet", columns=["supi", "pei"]).to_pylist() if r["supi"]]
    assert (key.subscriber(N4_IMSI, "imsi"), key.subscriber(N4_IMEI, "imei")) in {(r["supi"], r["pei"]) for r in pfcp}
    sessions = pq.read_table(out / "sessions.parquet").column("subscriber").to_pylist()
    assert key.subscriber(N4_IMSI, "imsi") in sessions  # the N4 session knows its subscriber
    assert key.subscriber(CN_IMSI, "imsi") == key.subscriber(f"imsi-{CN_IMSI}")  # GTPv2-C IE == SBI path
    _reidentify(store, out, raw, tmp_path)


def _reidentify(store_dir: Path, out: Path, raw: set[str], tmp_path: Path) -> None:
    """The admin's path back: the identities a case names, with the key, give pseudonyms found in the store;
    the audit keeps the case and the pseudonyms, never the identities or the key."""
    from console.app import create_app
    from console.state import ConsoleState
    from ingest.store import open_store
    from tests.console_fixtures import client

    key_text = (out / ".pseudonym.key").read_text().strip()
    state = ConsoleState(tmp_path / "console")
    state.add_user("admin", "admin-password-1", "admin")
    with open_store(store_dir) as store:
        app = create_app(store, state)
        c, csrf = client(app, "admin", "admin-password-1")
        body = {"case": "warrant-2026-117", "key": key_text, "identities": [CN_IMSI, "001019999999999"]}
        r = c.post("/api/admin/reidentify", json=body, headers=csrf)
        assert r.status_code == 200, r.text
        rows = r.json()["rows"]
        assert rows[0]["pseudonym"] == Pseudonymizer(key_text.encode()).subscriber(CN_IMSI, "imsi")
        assert rows[0]["messages"]["gtpc"] >= 1 and not rows[1]["messages"] and r.json()["found"] == 1
        wrong = c.post("/api/admin/reidentify", json={**body, "key": "not-the-key"}, headers=csrf).json()
        assert wrong["found"] == 0 and "check the key" in wrong["note"]
    audit = json.dumps(state.audit_log()[0])
    assert "warrant-2026-117" in audit and rows[0]["pseudonym"] in audit
    assert key_text not in audit and not any(v in audit for v in raw)


def _text(table: pa.Table) -> str:
    """Every value of a table as text (timestamps as integers: Python's datetime stops at microseconds; bytes
    as hex)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return json.dumps(table.to_pylist(), default=lambda v: v.hex() if isinstance(v, bytes) else str(v))


def _tbcd_hex(digits: str) -> str:
    """Telephony BCD (low nibble first, F filler), as hex text."""
    padded = digits + "f" * (len(digits) % 2)
    return "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))


def test_scrub_replaces_every_identity_in_text() -> None:
    key = Pseudonymizer(b"k")
    text = f"u={PHONE}&id={RESIDENT_ID}&s=imsi-{CN_IMSI}&g=msisdn-{MSISDN}&card=6222021234567890128&n=12345"
    scrubbed = key.scrub(text)
    assert not find(scrubbed) and all(v not in scrubbed for v in (PHONE, RESIDENT_ID, CN_IMSI, MSISDN))
    assert scrubbed.endswith("&n=12345")  # ordinary numbers stay
    assert key.subscriber("86" + PHONE, "msisdn") in scrubbed and key.subscriber(MSISDN, "msisdn") in scrubbed
    assert Pseudonymizer(b"other").scrub(text) != scrubbed


def _envelope_text(value: bytes) -> str:
    from ingest.stream.codec import decode

    part = decode(value).part
    texts = []
    for item in vars(part).values():
        for table in (item.values() if isinstance(item, dict) else [item]):
            if isinstance(table, pa.RecordBatch):
                table = pa.Table.from_batches([table])
            if isinstance(table, pa.Table):
                texts.append(_text(table))
    return "\n".join(texts)


def test_no_raw_identity_on_kafka_topics(tmp_path: Path) -> None:
    """Sensor -> Kafka -> detection worker: every message on every topic, decoded, holds no raw identity."""
    from kafka import KafkaConsumer, TopicPartition

    from tests.kafka_fixtures import Broker, liaowang, stop, wait_log, wait_stored

    captures = [planted(tmp_path / "planted.pcap"), *(PCAPS / n for n in SIGNALLING)]
    raw = raw_identities(captures)
    reference = subprocess.run([sys.executable, "-m", "console.cli", "replay", *map(str, captures), "--out",
                                str(tmp_path / "ref"), "-q"], cwd=ROOT, env={**os.environ, "LIAOWANG_PSEUDONYM_KEY": "k"})
    assert reference.returncode == 0
    flows = pq.read_metadata(tmp_path / "ref" / "flows.parquet").num_rows
    broker = Broker(tmp_path)
    broker.start()
    env = {"LIAOWANG_PSEUDONYM_KEY": "k"}
    procs = []
    try:
        procs.append(liaowang("detect", "--kafka", broker.bootstrap, "--group", "g", "--store", str(tmp_path / "s"),
                              "--topic-prefix", "priv", "--commit-interval", "0.5", log=tmp_path / "w.log", env=env))
        wait_log([tmp_path / "w.log"], "assigned", procs)
        sensor = liaowang("sensor", "--pcap", *map(str, captures), "--kafka", broker.bootstrap, "--topic-prefix",
                          "priv", "--spool", str(tmp_path / "spool"), log=tmp_path / "sensor.log", env=env)
        assert sensor.wait(120) == 0, (tmp_path / "sensor.log").read_text()
        wait_stored(tmp_path / "s", flows, 0, procs[:1])  # every flow is on the flows topic and stored
        consumer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], auto_offset_reset="earliest",
                                 consumer_timeout_ms=5000, enable_auto_commit=False,
                                 fetch_max_bytes=64 << 20, max_partition_fetch_bytes=64 << 20)
        consumer.assign([TopicPartition(t, p) for t in ("priv.packets", "priv.flows", "priv.dead-letter")
                         for p in consumer.partitions_for_topic(t) or ()])
        consumer.seek_to_beginning()
        messages = {(m.topic, m.partition, m.offset): m.value for m in consumer}
        consumer.close()
    finally:
        for p in procs:
            stop(p, timeout=10)
        broker.stop()
    topics = {t for t, _, _ in messages}
    assert {"priv.packets", "priv.flows"} <= topics
    texts = {key: _envelope_text(value) for key, value in messages.items() if key[0] != "priv.dead-letter"}
    assert sum(len(t) for t in texts.values()) > 100_000
    texts["logs"] = (tmp_path / "w.log").read_text() + (tmp_path / "sensor.log").read_text()
    assert not {(where, value) for where, text in texts.items() for value in raw if value in text}
    assert Pseudonymizer(b"k").subscriber(CN_IMSI, "imsi") in "".join(texts.values())  # the pseudonyms travel


def test_no_raw_identity_in_elasticsearch(tmp_path: Path) -> None:
    from ingest.store import open_store

    url = subprocess.run(["bash", str(ROOT / "scripts" / "elasticsearch.sh")], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    captures = [planted(tmp_path / "planted.pcap"), *(PCAPS / n for n in SIGNALLING)]
    raw = raw_identities(captures)
    store = open_store(url)
    es = store.es  # type: ignore[attr-defined]
    es.indices.delete(index="liaowang-*", ignore_unavailable=True)
    run = subprocess.run([sys.executable, "-m", "console.cli", "replay", *map(str, captures), "--out",
                          str(tmp_path / "out"), "--store", url], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "LIAOWANG_PSEUDONYM_KEY": "k"})
    assert run.returncode == 0, run.stderr
    es.indices.refresh(index="liaowang-*")
    docs = []
    for index in es.indices.get(index="liaowang-*"):
        page = es.search(index=index, size=10_000, query={"match_all": {}})
        docs += [json.dumps(h["_source"], default=str) for h in page["hits"]["hits"]]
    store.close()
    text = "\n".join(docs)
    assert len(docs) > 500  # flows, alerts, sessions, messages
    assert not {value for value in raw if value in text}
    assert Pseudonymizer(b"k").subscriber(CN_IMSI, "imsi") in text
