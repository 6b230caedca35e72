"""Personal data, PFCP sequence and ICS master detection: what each reports and what it must not."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.detectors import IcsCommandFromNewMaster, PfcpSequenceSpoofing
from ingest.replay import replay
from sensors.capture.extract import FlowMatch, flow_frames
from sensors.generate.attacks import generated_attacks
from sensors.protocols.pii import luhn_valid, resident_id_valid, scan
from tests.conftest import PCAPS, decode_file


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generated_attacks(tmp_path_factory.mktemp("attacks"))


def _eve_alerts(out: Path) -> list[dict[str, object]]:
    lines = (out / "eve.json").read_text().splitlines()
    return [json.loads(x) for x in lines if '"event_type":"alert"' in x]


# -- personal data ---------------------------------------------------------------------

def test_check_digits_decide() -> None:
    assert resident_id_valid("11010519491231002X")
    assert not resident_id_valid("110105194912310021")  # wrong check character
    assert not resident_id_valid("110105194913310024")  # month 13
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_scan_finds_valid_identifiers_only() -> None:
    text = ("id=11010519491231002X&bad=110105194912310021&tel=13812345678&fax=12812345678"
            "&card=4111111111111111&n=4111111111111112&supi=imsi-460001234567890"
            ' ETag: "4e15332396500" ts=1700000000000')
    assert [(k.name, m) for k, m in scan(text)] == [
        ("RESIDENT_ID", "110105********002X"), ("MOBILE", "138****5678"), ("BANK_CARD", "411111******1111"),
        ("IMSI", "46000*******890")]


def test_personal_data_alert_is_masked_everywhere(attacks: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    replay([str(attacks["personal_data"])], out, processes=1)
    (alert,) = _eve_alerts(out)
    assert alert["liaowang"]["detail"] == (  # type: ignore[index]
        "resident_id:110105********002X mobile:138****5678 bank_card:411111******1111")
    stored = b"".join(p.read_bytes() for p in out.iterdir())
    for raw in (b"11010519491231002X", b"13812345678", b"4111111111111111", b"460001234567890"):
        assert raw not in stored
    packets = decode_file(attacks["personal_data"])
    assert packets.column("pii_kinds").to_pylist() == [1 | 2 | 8, 4]


# -- PFCP -------------------------------------------------------------------------------

def _requests(rows: list[tuple[str, str, int, int, int]]) -> pa.Table:
    src, dst, ttl, msg, seq = zip(*rows)
    return pa.table({"ts": pa.array(range(len(rows)), pa.timestamp("ns")), "src_ip": src, "dst_ip": dst,
                     "ip_ttl": pa.array(ttl, pa.uint8()), "pfcp_msg_type": pa.array(msg, pa.uint8()),
                     "pfcp_seq": pa.array(seq, pa.uint32())})


def test_pfcp_forged_request_is_flagged_and_explained() -> None:
    smf, upf = "10.0.0.1", "10.0.0.2"
    rows = [(smf, upf, 62, 52, 1000 + i) for i in range(5)] + [(smf, upf, 63, 54, 7), (smf, upf, 62, 54, 1006)]
    d = PfcpSequenceSpoofing()
    events = _requests(rows)
    assert d.select(events).all()
    assert d.evaluate(events).tolist() == [False] * 5 + [True, False]
    assert d.explain(events.slice(5, 1)) == ["Session Deletion Request seq 7, node's sequence at 1004, "
                                             "TTL 63 (node's usual 62)"]


def test_pfcp_restart_is_adopted_not_alerted() -> None:
    smf, upf = "10.0.0.1", "10.0.0.2"
    d = PfcpSequenceSpoofing()
    # a new association resets the counter at once; a silent restart is adopted after a few requests
    after_setup = [(smf, upf, 62, 52, 500), (upf, smf, 64, 5, 1), (smf, upf, 62, 50, 3)]
    assert not d.evaluate(_requests(after_setup)).any()
    silent = [(smf, upf, 62, 54, 90_000 + i) for i in range(6)] + [(smf, upf, 62, 52, 4)]
    # the first three are reported, the fourth in a row is adopted; then the old counter is the odd one
    assert d.evaluate(_requests(silent)).tolist() == [True] * 3 + [False] * 3 + [True]


def test_pfcp_node_pairs_in_sequence_are_judged_as_request_by_request() -> None:
    """Node pairs whose requests all follow on are moved on at once; the result, the state and its
    recency order are those of judging every request in turn."""
    import numpy as np

    rng = np.random.default_rng(5)
    nodes = [f"10.0.0.{i}" for i in range(1, 6)]
    counters = {(a, b): int(rng.integers(0, 1 << 24)) for a in nodes for b in nodes if a != b}
    batches = []
    for _ in range(6):
        rows = []
        for _ in range(300):
            pair = list(counters)[int(rng.integers(0, len(counters)))]
            counters[pair] = (counters[pair] + int(rng.integers(0, 3))) % (1 << 24)
            forged = rng.random() < 0.01 and pair[0] != nodes[0]  # some pairs stay clean throughout
            rows.append((*pair, 62, 54, int(rng.integers(0, 1 << 24)) if forged else counters[pair]))
        batches.append(_requests(rows))
    fast, reference = PfcpSequenceSpoofing(), PfcpSequenceSpoofing()
    for events in batches:
        got = fast.evaluate(events)
        reference.evaluate(events.slice(0, 0))  # makes its state
        want = np.zeros(events.num_rows, dtype=bool)
        reference.reasons_ = [None] * events.num_rows
        reference._steps(events, np.arange(events.num_rows), want)
        assert got.tolist() == want.tolist()
        assert fast.reasons_ == reference.reasons_
        assert list(fast.nodes_.items()) == list(reference.nodes_.items())
    assert 0 < sum(r is not None for r in fast.reasons_) < 20


def test_pfcp_spoofing_alert_on_the_5g_attacks_capture(tmp_path: Path) -> None:
    replay([str(PCAPS / "5g-attacks-clem272001_Dataset_2_capture2_pfcp_Deletion.pcap")], tmp_path / "o", processes=1)
    (alert,) = _eve_alerts(tmp_path / "o")
    assert alert["src_ip"] == "192.168.130.186" and alert["alert"]["severity"] == 1  # type: ignore[index]
    assert alert["liaowang"]["evidence"]["events"] == 10  # type: ignore[index]  # the 10 forged deletions


# -- ICS --------------------------------------------------------------------------------

def test_ics_write_from_a_second_host(attacks: dict[str, Path], tmp_path: Path) -> None:
    replay([str(attacks["ics_new_master"])], tmp_path / "o", processes=1)
    (alert,) = _eve_alerts(tmp_path / "o")
    assert (alert["src_ip"], alert["dest_ip"], alert["dest_port"]) == ("10.20.0.66", "10.20.0.50", 502)
    assert alert["liaowang"]["detail"] == "the device's master is 10.20.0.10"  # type: ignore[index]
    # an engineering station the operator declared is no finding
    replay([str(attacks["ics_new_master"])], tmp_path / "k", processes=1,
           detectors=[IcsCommandFromNewMaster(known_masters=("10.20.0.64/30",))])
    assert _eve_alerts(tmp_path / "k") == []


def test_ics_function_codes_match_tshark() -> None:
    s7 = decode_file(PCAPS / "ics-iti_s7_snap7_s300_stop.pcapng")
    assert s7.column("s7_func").to_pylist() == [0x29, 0x29] and s7.column("s7_rosctr").to_pylist() == [1, 3]
    dnp3 = decode_file(PCAPS / "ics-iti_dnp3_cold_restart_and_response.pcap")
    assert [f for f in dnp3.column("dnp3_func").to_pylist() if f is not None] == [13, 129]


def test_a_new_timeline_starts_detectors_afresh(attacks: dict[str, Path], tmp_path: Path) -> None:
    """An unrelated capture that starts before the previous one ended is judged on its own: there
    10.20.0.66 is the only host that ever talks to the PLC, so it is the master and its write is no finding."""
    from scapy.contrib.modbus import ModbusADURequest, ModbusPDU06WriteSingleRegisterRequest
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    frame = (Ether() / IP(src="10.20.0.66", dst="10.20.0.50") / TCP(sport=40300, dport=502, flags="PA")
             / ModbusADURequest(transId=1, unitId=1) / ModbusPDU06WriteSingleRegisterRequest(registerAddr=1))
    frame.time = 1_700_000_010.0  # while the first capture (1_700_000_000 to +30.5 s) still runs
    own_plant = tmp_path / "own_plant.pcap"
    wrpcap(str(own_plant), [frame])
    replay([str(attacks["ics_new_master"]), str(own_plant)], tmp_path / "o", processes=1)
    alerts = _eve_alerts(tmp_path / "o")
    assert [a["liaowang"]["detail"] for a in alerts] == [  # type: ignore[index]  # the first capture's only
        "the device's master is 10.20.0.10"]
    # its flow keeps the time its packet carries (not forced up to the other capture's), and the console
    # can cut it out of its file again
    flows = pq.read_table(tmp_path / "o" / "flows.parquet").to_pylist()
    (own,) = [f for f in flows if f["src_ip"] == "10.20.0.66" and f["src_port"] == 40300]
    first = int(own["first_seen"].timestamp() * 1e6) * 1000
    assert first == 1_700_000_010_000_000_000 and own["expiration_reason"] == "end_of_input"
    match = FlowMatch(own["src_ip"], own["dst_ip"], own["src_port"], own["dst_port"], own["ip_proto"], first, first)
    assert len(flow_frames([str(attacks["ics_new_master"]), str(own_plant)], match)) == 1
    assert max(f["last_seen"] for f in flows if f is not own).timestamp() > 1_700_000_030
