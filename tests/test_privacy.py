"""No raw subscriber identity leaves the sensor: replay captures that carry IMSIs, SUPIs, MSISDNs, IMEIs,
mobile and identity numbers, then search every output (Parquet, eve.json, the DuckDB store, the logs) for
the raw values, and find none; the pseudonyms still correlate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.privacy import Pseudonymizer
from sensors.protocols.pii import find
from tests.conftest import PCAPS, ROOT

#: planted in the generated capture (the resident ID's check digit is valid)
PHONE, RESIDENT_ID, CN_IMSI, MSISDN, IMEI = "13812345678", "110105199003071239", "460001234567890", "8613912345678", \
    "353490069873319"
#: bundled captures whose signalling carries identities (GTPv2-C, GTPv1, NAS, SBI, Diameter)
SIGNALLING = ["5g-attacks-clem272001_Dataset_2_capture_pdn.pcap", "zeek_tunnels_gtp_pdp_ctx_messages.pcapng",
              "arkime_diameter_synthetic.pcap", "telekom-5g-trace-visualizer_free5gc.pcap", "5greplay_oai.pcap",
              "5greplay_ue_authetication.pcapng"]


def planted(path: Path) -> Path:
    """Identities in wire text (HTTP, DNS, FTP, SBI-style paths) and in GTPv2-C IEs."""
    from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, Raw, wrpcap
    from scapy.contrib.gtp_v2 import IE_IMSI, IE_MEI, IE_MSISDN, GTPHeader, GTPV2CreateSessionRequest

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
    ]
    for i, f in enumerate(frames):
        f.time = 1_750_000_000 + i
    wrpcap(str(path), frames)
    return path


def raw_identities(paths: list[Path]) -> set[str]:
    """What a real dissector (tshark) reads in the captures (IMSIs, MSISDNs, IMEIs), and SUPIs in SBI paths."""
    found = {PHONE, RESIDENT_ID, CN_IMSI, MSISDN, IMEI}
    for p in paths:
        out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-E", "separator=\n", "-e", "e212.imsi",
                              "-e", "e164.msisdn", "-e", "gsm_a.imei", "-e", "gtpv2.mei", "-e", "http2.header.value",
                              "-e", "diameter.User-Name"], capture_output=True, text=True, check=True).stdout
        for value in out.split():
            found.update(re.findall(r"(?<![0-9])[0-9]{11,15}(?![0-9])", value))
        found.update(m.decode() for m in re.findall(rb"imsi-([0-9]{11,15})", p.read_bytes()))  # SBI paths in clear
    return {v for v in found if len(v) >= 11}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is installed by scripts/setup.sh")
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
    leaks = {(where, value) for where, text in texts.items() for value in raw if value in text}
    assert not leaks

    # what was found is still there, as tokens that correlate
    key = Pseudonymizer.for_output(out)
    flows = _text(pq.read_table(out / "flows.parquet"))
    assert key.subscriber("86" + PHONE, "msisdn") in flows  # the DNS name, as the flow's server name
    gtpc = pq.read_table(out / "proto_gtpc.parquet").to_pylist()
    assert {r["imsi"] for r in gtpc} >= {key.subscriber(CN_IMSI, "imsi")}
    assert key.subscriber(CN_IMSI, "imsi") == key.subscriber(f"imsi-{CN_IMSI}")  # GTPv2-C IE == SBI path


def _text(table: pa.Table) -> str:
    """Every value of a table as text (timestamps as integers: Python's datetime stops at microseconds)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return json.dumps(table.to_pylist(), default=str)


def test_scrub_replaces_every_identity_in_text() -> None:
    key = Pseudonymizer(b"k")
    text = f"u={PHONE}&id={RESIDENT_ID}&s=imsi-{CN_IMSI}&g=msisdn-{MSISDN}&card=6222021234567890128&n=12345"
    scrubbed = key.scrub(text)
    assert not find(scrubbed) and all(v not in scrubbed for v in (PHONE, RESIDENT_ID, CN_IMSI, MSISDN))
    assert scrubbed.endswith("&n=12345")  # ordinary numbers stay
    assert key.subscriber("86" + PHONE, "msisdn") in scrubbed and key.subscriber(MSISDN, "msisdn") in scrubbed
    assert Pseudonymizer(b"other").scrub(text) != scrubbed
