"""Control-plane dissection and session correlation against tshark's fields (tests/golden/messages,
made by tests/oracles/tshark_messages.py), on bundled captures and, when present, the shared Open5GS ones."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.replay import replay
from sensors.protocols import diameter, gtpc, pfcp, sctp
from sensors.protocols.sbi import Hpack
from tests.conftest import GOLDEN, PCAPS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
CAPTURES = {
    "5greplay_oai.pcap": PCAPS / "5greplay_oai.pcap",
    "telekom-5g-trace-visualizer_free5gc.pcap": PCAPS / "telekom-5g-trace-visualizer_free5gc.pcap",
    "5greplay_ue_authetication.pcapng": PCAPS / "5greplay_ue_authetication.pcapng",
    "arkime_diameter_synthetic.pcap": PCAPS / "arkime_diameter_synthetic.pcap",
    "5g-attacks-clem272001_Dataset_2_capture_pdn.pcap": PCAPS / "5g-attacks-clem272001_Dataset_2_capture_pdn.pcap",
    "testattach.pcapng": SHARED / "open5gs" / "testattach.pcapng",
    "testregistration.pcapng": SHARED / "open5gs" / "testregistration.pcapng",
}
_out: dict[str, Path] = {}


def _replayed(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = CAPTURES[name]
    if not path.exists():
        pytest.skip(f"{path} is not here (the shared corpus is optional)")
    if name not in _out:
        out = tmp_path_factory.mktemp("cp")
        replay([str(path)], out, processes=1)
        _out[name] = out
    return _out[name]


def _table(out: Path, name: str) -> list[dict[str, object]]:
    t = pq.read_table(out / f"{name}.parquet")
    for c in t.column_names:
        if pa.types.is_timestamp(t.schema.field(c).type):
            t = t.set_column(t.schema.get_field_index(c), c, t.column(c).cast(pa.int64()))
    return t.to_pylist()


def _golden(name: str) -> dict[str, list[dict[str, list[str]]]]:
    return json.loads((GOLDEN / "messages" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _int(v: str) -> int:
    return int(v, 0)


@pytest.mark.parametrize("name", ["5greplay_oai.pcap", "telekom-5g-trace-visualizer_free5gc.pcap",
                                  "5g-attacks-clem272001_Dataset_2_capture_pdn.pcap", "testregistration.pcapng"])
def test_pfcp_messages_match_tshark(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    rows = _table(_replayed(name, tmp_path_factory), "proto_pfcp")
    gold = _golden(name)["pfcp"]
    assert len(rows) == len(gold) > 0
    for r, g in zip(rows, gold):
        assert r["msg_type"] == int(g["pfcp.msg_type"][0])
        assert r["seq"] == int(g["pfcp.seqno"][0])
        assert r["error"] is None
        assert sorted(r["ue_ips"]) == sorted(set(g["pfcp.ue_ip_addr_ipv4"]))  # type: ignore[arg-type]
        assert sorted(f["teid"] for f in r["fteids"] if f["teid"] is not None) == sorted(  # type: ignore[attr-defined]
            _int(x) for x in g["pfcp.f_teid.teid"])
        assert [o["teid"] for o in r["outer_headers"]] == [  # type: ignore[attr-defined]
            _int(x) for x in g["pfcp.outer_hdr_creation.teid"]]
        if g["pfcp.cause"]:
            assert r["cause"] == int(g["pfcp.cause"][0])


#: captures with SCTP packets that bundle several NGAP DATA chunks
BUNDLED = ("telekom-5g-trace-visualizer_free5gc.pcap", "5greplay_ue_authetication.pcapng")


@pytest.mark.parametrize("name", ["5greplay_oai.pcap", "telekom-5g-trace-visualizer_free5gc.pcap",
                                  "5greplay_ue_authetication.pcapng", "testregistration.pcapng"])
def test_ngap_messages_match_tshark(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    rows = _table(_replayed(name, tmp_path_factory), "proto_ngap")
    gold = _golden(name)["ngap"]  # one entry per packet, with the fields of every NGAP PDU in it
    packets = [list(group) for _, group in itertools.groupby(rows, key=lambda r: r["ts"])]
    assert len(packets) == len(gold) > 0
    for pdus, g in zip(packets, gold):  # every PDU of a packet, bundled DATA chunks included, in order
        assert [r["procedure_code"] for r in pdus] == [int(x) for x in g["ngap.procedureCode"]]
        assert {r["ran_ue_ngap_id"] for r in pdus} - {None} == {int(x) for x in g["ngap.RAN_UE_NGAP_ID"]}
        assert [t["teid"] for r in pdus for t in r["gtp_tunnels"]] == [  # type: ignore[attr-defined]
            int(x, 16) for x in g["ngap.gTP_TEID"]]
    assert any(len(g["ngap.procedureCode"]) > 1 for g in gold) == (name in BUNDLED)


def test_diameter_messages_match_tshark(tmp_path_factory: pytest.TempPathFactory) -> None:
    rows = _table(_replayed("arkime_diameter_synthetic.pcap", tmp_path_factory), "proto_diameter")
    gold = _golden("arkime_diameter_synthetic.pcap")["diameter"]
    assert len(rows) == len(gold) == 8
    for r, g in zip(rows, gold):
        assert (r["cmd_code"], r["app_id"], r["origin_host"]) == (
            int(g["diameter.cmd.code"][0]), int(g["diameter.applicationId"][0]), g["diameter.Origin-Host"][0])
        assert r["result_code"] == (int(g["diameter.Result-Code"][0]) if g["diameter.Result-Code"] else None)
    users = [r["user_name"] for r in rows if r["user_name"]]
    assert users and all(str(u).startswith("sub-") for u in users)  # pseudonymised, never the IMSI


def test_gtpv2_sessions_of_an_lte_attach(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _replayed("testattach.pcapng", tmp_path_factory)
    rows = _table(out, "proto_gtpc")
    gold = [g for g in _golden("testattach.pcapng")["gtpv2"]]
    assert [r["msg_type"] for r in rows] == [int(g["gtpv2.message_type"][0]) for g in gold]
    assert [sorted(f["interface_type"] for f in r["fteids"]) for r in rows] == [  # type: ignore[attr-defined]
        sorted(int(x) for x in g["gtpv2.f_teid_interface_type"]) for g in gold]
    sessions = [s for s in _table(out, "sessions") if s["generation"] == "4g"]
    assert sessions and all(str(s["subscriber"]).startswith("sub-") for s in sessions if s["subscriber"])
    assert any(s["ue_ip"] and s["ul_teid"] is not None and s["dnn"] == "internet" for s in sessions)


@pytest.mark.parametrize("name", ["5greplay_oai.pcap", "telekom-5g-trace-visualizer_free5gc.pcap",
                                  "5g-attacks-clem272001_Dataset_2_capture_pdn.pcap", "testregistration.pcapng",
                                  "testattach.pcapng"])
def test_sessions_reproduce_tsharks(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every PFCP session tshark's fields imply, with its F-SEIDs and TEIDs.  The Open5GS captures run their
    test cases against a core that restarts and hands out SEIDs and TEIDs from 1 again, and the LTE one has
    an SGW and a PGW session per bearer with the same small SEIDs: none of them may merge into another."""
    out = _replayed(name, tmp_path_factory)
    ours = {(s["ue_ip"], s["cp_seid"], s["up_seid"]): s for s in _table(out, "sessions")}
    gold = _golden(name)["sessions"]
    assert gold
    assert len({(g["ue_ip"], g["cp_seid"], g["up_seid"]) for g in gold}) <= len(ours)
    for g in gold:
        s = ours[(g["ue_ip"], g["cp_seid"], g["up_seid"])]  # type: ignore[index]
        if "ul_teid" in g:
            assert s["ul_teid"] == g["ul_teid"]  # type: ignore[comparison-overlap]
        if "dl_teid" in g:
            assert s["dl_teid"] == g["dl_teid"]  # type: ignore[comparison-overlap]


@pytest.mark.parametrize("name", ["5greplay_oai.pcap", "telekom-5g-trace-visualizer_free5gc.pcap",
                                  "testregistration.pcapng"])
def test_every_gtpu_flow_belongs_to_a_session_with_its_subscriber(
        name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _replayed(name, tmp_path_factory)
    gtpu = [f for f in _table(out, "flows") if f["tunnel_type"] == "gtpu"]
    assert gtpu and all(f["session_id"] for f in gtpu)
    sessions = {s["session_id"]: s for s in _table(out, "sessions")}
    # Open5GS's later test cases bring their UE back with its 5G-GUTI (Service Request, GUTI registration):
    # no SUCI in clear, so those sessions' subscriber is unknown (it took wrong merges to give them one)
    every_subscriber = name != "testregistration.pcapng"
    for f in gtpu:
        s = sessions[f["session_id"]]
        assert s["pdu_session_id"] and s["snssai"] and {"n2", "n3", "n4"} <= set(s["planes"])
        assert s["subscriber"] or not every_subscriber
    assert any(sessions[f["session_id"]]["subscriber"] for f in gtpu)


def test_network_function_roles(tmp_path_factory: pytest.TempPathFactory) -> None:
    roles = {(r["ip"], r["role"]) for r in _table(_replayed("5greplay_oai.pcap", tmp_path_factory), "nf_inventory")}
    assert {("192.168.70.129", "gNB"), ("192.168.70.132", "AMF"), ("192.168.70.133", "SMF"),
            ("192.168.70.134", "UPF")} <= roles
    free = {(r["ip"], r["role"]) for r in _table(_replayed("telekom-5g-trace-visualizer_free5gc.pcap",
                                                           tmp_path_factory), "nf_inventory")}
    assert {("127.0.0.1", t) for t in ("AMF", "AUSF", "UDM", "UDR", "PCF", "SMF")} <= free  # SBI servers


def test_subscriber_identities_are_never_stored(tmp_path_factory: pytest.TempPathFactory) -> None:
    for name, imsi in (("telekom-5g-trace-visualizer_free5gc.pcap", b"2089300007487"),
                       ("5greplay_oai.pcap", b"208950000000031")):
        out = _replayed(name, tmp_path_factory)
        stored = [p for p in out.iterdir() if p.name.startswith(("proto_", "sessions")) and p.suffix == ".parquet"]
        assert stored
        for p in stored:
            for row in _table(out, p.stem):
                assert imsi.decode() not in json.dumps(row, default=str)
    sbi = _table(_replayed("telekom-5g-trace-visualizer_free5gc.pcap", tmp_path_factory), "proto_sbi")
    paths = [r["path"] for r in sbi if r["path"] and "nudm-sdm" in str(r["path"])]
    assert paths and all("/sub-" in str(p) for p in paths)


def test_alerts_on_tunnelled_flows_carry_their_session(tmp_path: Path) -> None:
    from sensors.generate.control_plane import control_plane_attacks

    capture = control_plane_attacks(tmp_path / "gen")["pfcp_session_tampering"]
    replay([str(capture)], tmp_path / "out", processes=1)
    alerts = _table(tmp_path / "out", "alerts")
    spoofed = [a for a in alerts if str(a["signature"]).startswith("GTP-U uplink from an address not bound")]
    assert spoofed and json.loads(str(spoofed[0]["session"]))["ue_ip"] == "10.45.0.5"
    eve = [json.loads(x) for x in (tmp_path / "out" / "eve.json").read_text().splitlines()]
    assert any(e.get("liaowang", {}).get("session", {}).get("ue_ip") == "10.45.0.5" for e in eve
               if e["event_type"] == "alert")


def test_malformed_messages_are_data() -> None:
    est = bytes.fromhex("2132002c000000000000000000000200003c000500c0a80001")
    for cut in range(4, len(est)):
        for decoder in (pfcp.decode_message, gtpc.decode_message, diameter.decode_message):
            row = decoder(est[:cut] + b"\x00" * 20)
            assert isinstance(row, dict)
    row = pfcp.decode_message(est)
    assert row["error"] is not None and row["node_id"] == "192.168.0.1"


def test_bundled_sctp_data_chunks_are_walked_safely() -> None:
    """Chunks after the first DATA chunk: the NGAP ones are read, a SACK and a Diameter chunk skipped, and
    a chunk cut short or with a length under 4 ends the walk without an error."""
    def chunk(kind: int, body: bytes, ppid: int | None = None) -> bytes:
        value = (struct.pack("!IHHI", 1, 0, 0, ppid) if ppid is not None else b"") + body
        raw = struct.pack("!BBH", kind, 3, 4 + len(value)) + value
        return raw + b"\0" * (-len(raw) % 4)

    more = chunk(0, b"\x00\x0f\x40\x01", 60) + chunk(3, b"\x00" * 12) + chunk(0, b"dia", 46) + chunk(0, b"ngap2", 60)
    assert sctp.data_chunks(more, (60,)) == [b"\x00\x0f\x40\x01", b"ngap2"]
    assert sctp.data_chunks(more, (46, 47)) == [b"dia"]
    for cut in range(len(more)):
        assert len(sctp.data_chunks(more[:cut], (60,))) <= 2
    assert sctp.data_chunks(b"\x00\x03\x00\x00" + more, (60,)) == []  # a zero length: stop, not loop


def test_hpack_survives_a_connection_caught_mid_stream() -> None:
    dec = Hpack()
    # indexed field 70 (a dynamic entry inserted before the capture), then ':method: GET' (static 2),
    # then a literal with incremental indexing, referenced next as index 62
    block = bytes([0x80 | 70, 0x82, 0x40, 4]) + b"x-nf" + bytes([3]) + b"AMF" + bytes([0x80 | 62])
    fields, incomplete = dec.decode(block)
    assert incomplete
    assert fields[1] == (b":method", b"GET") and fields[2] == (b"x-nf", b"AMF") and fields[3] == (b"x-nf", b"AMF")


def test_pfcp_ies_are_walked_into_groups_with_their_rule_ids() -> None:
    from sensors.generate.control_plane import _ie, _pfcp

    fteid = _ie(21, b"\x01" + struct.pack("!I", 0x1234) + bytes([10, 0, 0, 9]))
    ue = _ie(93, b"\x02" + bytes([10, 45, 0, 7]))
    pdr = _ie(1, _ie(56, b"\x00\x07") + _ie(2, _ie(20, b"\x00") + fteid + ue) + _ie(108, b"\x00\x00\x00\x03"))
    ohc = _ie(84, b"\x01\x00" + struct.pack("!I", 0x55) + bytes([10, 0, 0, 1]))
    far = _ie(3, _ie(108, b"\x00\x00\x00\x03") + _ie(44, b"\x02\x00")
              + _ie(4, _ie(42, b"\x00") + _ie(22, b"\x08internet") + ohc))  # towards access: the gNB
    vendor = struct.pack("!HHH", 0x8001, 3, 10415) + b"x"
    est = _pfcp(50, 9, pdr + far + vendor + pdr, seid=0)  # the same rule twice: ids listed once
    row = pfcp.decode_message(est)
    assert row["error"] is None and row["seq"] == 9 and row["seid"] == 0
    assert row["fteids"] == [{"teid": 0x1234, "ip": "10.0.0.9", "pdr_id": 7, "source_interface": 0,
                              "choose": False}] * 2
    assert row["outer_headers"] == [{"teid": 0x55, "ip": "10.0.0.1", "far_id": 3, "destination_interface": 0}]
    assert row["ue_ips"] == ["10.45.0.7"] and row["pdr_ids"] == [7] and row["far_ids"] == [3]
    assert row["network_instances"] == ["internet"] and row["apply_actions"] == [2]
    assert row["unknown_ies"] == [{"type": 0x8001, "value": struct.pack("!H", 10415) + b"x"}]
    # a group whose last IE runs past the group: what came before is kept, the error names the byte
    broken = _pfcp(50, 9, _ie(1, _ie(56, b"\x00\x07") + struct.pack("!HH", 108, 40)) + far, seid=0)
    row = pfcp.decode_message(broken)
    assert row["pdr_ids"] == [7] and row["error"] == "truncated IE at byte 26" and row["far_ids"] == []
