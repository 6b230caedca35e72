"""Rules: loading, vectorized matching, windows, and every stable rule on a firing and a benign capture."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from console.cli import main
from detection.detectors import default_detectors
from detection.engine import DetectionEngine
from detection.rules.loader import RuleError, load_file, load_rules
from ingest.replay import replay
from tests.conftest import PCAPS, capture_path, decode_file

RULES = {r.title: r for r in load_rules() + [d.rule for d in default_detectors()]}


def _write(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    """A pcap from (seconds, frame) pairs: flood tests need thousands of packets, fast."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, frame in frames:
            f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)
    return path


def _variants(template: bytes, n: int, patch_at: int) -> list[bytes]:
    """``n`` copies of a frame, two bytes at ``patch_at`` counting up (ports or addresses differ)."""
    return [template[:patch_at] + struct.pack("!H", i % 65536) + template[patch_at + 2 :] for i in range(n)]


def _eth(pkt: object) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)  # type: ignore[operator]


def _tcp(src: str, dst: str, dport: int, payload: bytes, sport: int = 40001) -> bytes:
    return _eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA") / payload)


def _encoded_names(n: int, domain: str) -> list[str]:
    """Names as a DNS tunnel makes them: base32-like data labels under one domain."""
    rng = np.random.default_rng(7)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz234567"))
    return [f"{''.join(rng.choice(alphabet, 50))}.{''.join(rng.choice(alphabet, 10))}.{domain}" for _ in range(n)]


def generated_attacks(tmp: Path) -> dict[str, Path]:
    """Attacks the public record lacks (or lacks under a permissive licence) as small scapy captures."""
    syn = _eth(IP(src="198.51.100.7", dst="10.0.0.5") / TCP(sport=40000, dport=80, flags="S"))
    udp = _eth(IP(src="198.51.100.8", dst="10.0.0.6") / UDP(sport=5000, dport=9999) / (b"x" * 64))
    icmp = _eth(IP(src="198.51.100.9", dst="10.0.0.7") / ICMP(type=8) / (b"p" * 32))
    sweep = _eth(IP(src="198.51.100.10", dst="10.1.0.0") / TCP(sport=50000, dport=445, flags="S"))
    t0 = 1_700_000_000.0
    return {
        "syn_flood": _write(tmp / "syn.pcap", [(t0 + i * 0.001, f) for i, f in enumerate(_variants(syn, 3000, 34))]),
        "udp_flood": _write(tmp / "udp.pcap", [(t0 + i * 0.0004, udp) for i in range(12000)]),
        "icmp_flood": _write(tmp / "icmp.pcap", [(t0 + i * 0.004, icmp) for i in range(1500)]),
        # 14 + 16: the last two bytes of the destination address
        "sweep": _write(tmp / "sweep.pcap", [(t0 + i * 0.1, f) for i, f in enumerate(_variants(sweep, 80, 32))]),
        "dns_tunnel": _write(tmp / "dns_tunnel.pcap", [
            (t0 + i * 0.5, _eth(IP(src="10.0.0.20", dst="10.0.0.53") / UDP(sport=30000 + i, dport=53)
                                / DNS(id=i, rd=1, qd=DNSQR(qname=name, qtype="TXT" if i % 2 else "A"))))
            for i, name in enumerate(_encoded_names(40, "t.exfil-example.com.cn"))]),
        "icmp_tunnel": _write(tmp / "icmp_tunnel.pcap", [
            (t0 + i * 2.0, _eth(IP(src="10.0.0.21", dst="203.0.113.9") / ICMP(type=8, id=77, seq=i)
                                / (b"\x17" * (80 + 37 * i))))
            for i in range(12)]),
        "cleartext_credentials": _write(tmp / "cleartext.pcap", [
            (t0, _tcp("10.0.0.22", "10.0.0.110", 110, b"USER alice\r\n")),
            (t0 + 1, _tcp("10.0.0.22", "10.0.0.110", 110, b"PASS s3cret\r\n")),
            (t0 + 2, _tcp("10.0.0.22", "10.0.0.143", 143, b"a001 LOGIN alice s3cret\r\n")),
            (t0 + 3, _tcp("10.0.0.22", "10.0.0.80", 80,
                          b"GET /admin HTTP/1.1\r\nHost: nas\r\nAuthorization: Basic YWxpY2U6czNjcmV0\r\n\r\n")),
            (t0 + 4, _tcp("10.0.0.22", "10.0.0.80", 8080,
                          b"GET / HTTP/1.1\r\nHost: nas\r\nAuthorization: Bearer eyJhbGciOi\r\n\r\n")),
        ]),
        "smb1": _write(tmp / "smb1.pcap", [
            (t0, _tcp("10.0.0.23", "10.0.0.45", 445, b"\x00\x00\x00\x2f\xffSMBr" + bytes(38)))]),
        "beaconing": _write(tmp / "beacon.pcap", [
            (t0 + i * 30.0 + 0.2 * (i % 3) + k * 0.05,
             _eth(IP(src="10.0.0.30", dst="203.0.113.50") / TCP(sport=41000 + i, dport=443, flags=flags) / data))
            for i in range(12) for k, (flags, data) in enumerate([("S", b""), ("PA", b"b" * 180), ("FA", b"")])]),
        "teid_spoofing": _write(tmp / "teid_spoofing.pcap", [
            (t0 + i, _eth(IP(src="172.16.0.2", dst="172.16.0.1") / UDP(sport=2152, dport=2152)
                          / GTP_U_Header(teid=0x100, gtp_type=255) / IP(src=src, dst=dst) / UDP(sport=5000 + i, dport=53)
                          / b"q"))
            for i, (src, dst) in enumerate([("10.45.0.2", "8.8.8.8"), ("10.45.0.2", "1.1.1.1"),
                                            ("10.45.0.2", "9.9.9.9"), ("10.45.0.99", "8.8.4.4")])]),
        "large_transfer": _write(tmp / "upload.pcap", [
            (t0 + i * 0.001, frame) for i, frame in enumerate(
                [_eth(IP(src="10.0.0.40", dst="198.51.100.77") / TCP(sport=42000, dport=443, flags="S"))]
                + [_eth(IP(src="10.0.0.40", dst="198.51.100.77") / TCP(sport=42000, dport=443, flags="A")
                        / (b"u" * 1400))] * 15000)]),
        "old_web_server": _write(tmp / "old_web.pcap", [
            (t0, _tcp("10.0.0.80", "10.0.0.24", 40002,
                      b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.49 (Unix)\r\nContent-Length: 0\r\n\r\n", sport=80))]),
    }


def _alerts(tmp: Path, inputs: list[Path], name: str = "out", **kw: object) -> list[dict[str, object]]:
    replay([str(p) for p in inputs], tmp / name, **kw)  # type: ignore[arg-type]
    table = pq.read_table(tmp / name / "alerts.parquet")
    for c in ("first_seen", "last_seen"):  # nanoseconds: as integers
        table = table.set_column(table.schema.get_field_index(c), c, table.column(c).cast(pa.int64()))
    return table.to_pylist()


FIRING = {  # stable rule -> capture that must fire it (bundled, or generated by name)
    "TCP vertical port scan (many ports of one host probed with SYN)":
        "5g-attacks-clem272001_Dataset_2_capture2_nmap-port-service.pcap",
    "Horizontal sweep (one port probed on many hosts)": "sweep",
    "TCP SYN flood towards one service": "syn_flood",
    "UDP flood towards one host": "udp_flood",
    "ICMP echo flood towards one host": "icmp_flood",
    "SSH brute force (many short sessions to one server)": "zeek_ssh_sshguess.pcap",
    "FTP, Telnet or RDP brute force (many short sessions to one server)": "zeek_ftp_bruteforce.pcap",
    "Obsolete TLS/SSL version offered (SSL 3.0, TLS 1.0 or 1.1)":
        "suricata-verify_bug-5713-01_TLSv1-Extracted-MaliciousC2.pcap",
    "GTP-in-GTP (GTP-U carried inside a GTP-U tunnel)": "zeek_tunnels_gtp_gtp4_udp_2152_inside.pcap",
    "PFCP heartbeat storm towards one node": "5g-attacks-clem272001_Dataset_2_capture_2_pfcp-DoS.pcap",
    "DNS tunnelling or exfiltration (many unique encoded names under one domain)": "dns_tunnel",
    "ICMP tunnel (echo payloads of varying size between two hosts)": "icmp_tunnel",
    "Credentials sent in cleartext (FTP/POP3 PASS, IMAP LOGIN, SMTP AUTH, HTTP Basic)": "zeek_ftp_bruteforce.pcap",
    "SMBv1 in use (EternalBlue-era protocol)": "smb1",
    "Outdated OpenSSH server or client (before 7.7)": "suricata-verify_ssh-hassh_input.pcap",
    "Web server version with known exploited vulnerabilities (Apache httpd, IIS 6)": "old_web_server",
    # stateful detectors
    "C2 beaconing (regular connections of similar size to one service)": "beaconing",
    "GTP-U TEID spoofing (inner source address not the UE's for this TEID)": "teid_spoofing",
    "Large outbound transfer to a never-seen external host": "large_transfer",
}
BENIGN = ["5greplay_oai.pcap", "telekom-5g-trace-visualizer_free5gc.pcap", "arkime_gtp-u.pcap", "zeek_tls_tls1.2.pcap",
          "5g-attacks-clem272001_Dataset_2_capture2_pfcp_Deletion.pcap", "zeek_tunnels_gtp_gtp7_ipv6.pcap"]


def test_every_stable_rule_has_a_firing_capture() -> None:
    stable = {t for t, r in RULES.items() if r.status == "stable"}
    assert stable == set(FIRING)


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generated_attacks(tmp_path_factory.mktemp("attacks"))


@pytest.mark.parametrize("title", sorted(FIRING))
def test_stable_rule_fires_on_its_capture(title: str, attacks: dict[str, Path], tmp_path: Path) -> None:
    source = FIRING[title]
    path = attacks[source] if source in attacks else PCAPS / source
    fired = [a for a in _alerts(tmp_path, [path], processes=1) if a["signature"] == title]
    assert len(fired) == 1, "one alert per episode, repeats aggregated"
    a = fired[0]
    evidence = json.loads(str(a["evidence"]))
    rule = RULES[title]
    assert evidence["peak"] >= rule.aggregate.threshold and a["event_count"] >= evidence["peak"] - 1
    assert a["level"] == rule.grade and a["src_ip"] and a["tags"] == rule.tags


def test_teid_spoofing_names_the_injected_source(attacks: dict[str, Path], tmp_path: Path) -> None:
    (alert,) = _alerts(tmp_path, [attacks["teid_spoofing"]], processes=1)
    assert (alert["src_ip"], alert["teid"], alert["tunnel_dst_ip"]) == ("10.45.0.99", 0x100, "172.16.0.1")
    assert alert["level"] == "red" and alert["detector"] == "TeidSpoofing"


def test_cleartext_credentials_are_flagged_but_never_copied(attacks: dict[str, Path], tmp_path: Path) -> None:
    replay([str(attacks["cleartext_credentials"])], tmp_path / "o", processes=1)
    eve = (tmp_path / "o" / "eve.json").read_text()
    alerts = [json.loads(x) for x in eve.splitlines() if '"event_type":"alert"' in x]
    # POP3 PASS, IMAP LOGIN and HTTP Basic; a bearer token is not a password, a USER line carries none
    assert sorted((a["dest_ip"], a["dest_port"]) for a in alerts) == [
        ("10.0.0.110", 110), ("10.0.0.143", 143), ("10.0.0.80", 80)]
    assert "s3cret" not in eve and "YWxpY2U6czNjcmV0" not in eve
    packets = decode_file(attacks["cleartext_credentials"])
    assert packets.column("login_command").to_pylist() == ["USER", "PASS", "LOGIN", None, None]
    assert packets.column("http_auth_scheme").to_pylist() == [None, None, None, "Basic", "Bearer"]


def test_benign_captures_raise_no_alerts(tmp_path: Path) -> None:
    inputs = [PCAPS / b for b in BENIGN] + [capture_path("generated_mixed_10k.pcap")]
    assert _alerts(tmp_path, inputs, processes=1) == []


def test_alerts_are_the_same_for_any_batching_and_process_count(tmp_path: Path, attacks: dict[str, Path]) -> None:
    inputs = [attacks["syn_flood"], PCAPS / "zeek_ssh_sshguess.pcap", PCAPS / "zeek_ftp_bruteforce.pcap",
              PCAPS / "5g-attacks-clem272001_Dataset_2_capture_2_pfcp-DoS.pcap", attacks["beaconing"],
              attacks["teid_spoofing"]]
    one = _alerts(tmp_path, inputs, "one", processes=1)
    small = _alerts(tmp_path, inputs, "small", processes=1, chunk_bytes=16 << 10)
    forked = _alerts(tmp_path, inputs, "forked", processes=3, chunk_bytes=16 << 10)
    assert len(one) >= 4
    assert one == small == forked  # deterministic ids and counts, so re-delivery never duplicates


def test_alert_events_in_eve(tmp_path: Path) -> None:
    replay([str(PCAPS / "zeek_ssh_sshguess.pcap")], tmp_path / "o", processes=1)
    events = [json.loads(x) for x in (tmp_path / "o" / "eve.json").read_text().splitlines()]
    alerts = [e for e in events if e["event_type"] == "alert"]
    # the brute force, and both ends' outdated OpenSSH (6.2 and 6.7)
    assert sorted(a["alert"]["signature"][:12] for a in alerts) == ["Outdated Ope"] * 2 + ["SSH brute fo"]
    a = next(a for a in alerts if a["alert"]["signature"].startswith("SSH brute"))
    assert a["alert"]["severity"] == 1 and a["alert"]["signature_id"] == RULES[a["alert"]["signature"]].signature_id
    assert a["liaowang"]["level"] == "orange" and "attack.t1110.001" in a["liaowang"]["tags"]
    assert a["liaowang"]["evidence"]["group"] == {"src_ip": "192.168.56.1", "dst_ip": "192.168.56.103"}
    assert a["community_id"].startswith("1:") and events[-1]["stats"]["detect"]["alerts"] == 3


# -- the rule language -------------------------------------------------------------------

RULE = """\
id: 6526f84f-e467-418a-a5c7-ed90ce2f21fd
title: test rule
status: test
level: high
logsource:
  source: packets
detection:
  sel:
    dst_port: 22
  condition: sel
"""


def test_loading_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(RULE.replace("dst_port: 22", "dst_port|cidr: 22"))
    with pytest.raises(RuleError, match=r"bad.yml:\d+: .*needs an address field"):
        load_file(bad)
    bad.write_text(RULE.replace("level: high", "level: huge"))
    with pytest.raises(RuleError, match=r"bad.yml:4: level: 'huge' is not one of"):
        load_file(bad)
    bad.write_text(RULE.replace("dst_port: 22", "no_such_field: 22"))
    with pytest.raises(RuleError, match="unknown packets field 'no_such_field'"):
        load_file(bad)
    bad.write_text(RULE.replace("condition: sel", "condition: sel and (other"))
    with pytest.raises(RuleError, match="condition"):
        load_file(bad)
    dup = tmp_path / "dup.yml"
    dup.write_text(RULE + "---\n" + RULE)
    with pytest.raises(RuleError, match=r"dup.yml:12: duplicate rule id"):
        load_rules([dup])


def test_modifiers_and_conditions_on_packets(tmp_path: Path) -> None:
    rule = tmp_path / "r.yml"
    rule.write_text(RULE.replace("""  sel:
    dst_port: 22
  condition: sel""", """  net:
    dst_ip|cidr: 192.168.56.0/24
  ssh:
    ssh_banner|startswith: ssh-2.0
  big:
    frame_len|gte: 1000
  condition: net and (ssh or big) and not 1 of nothing*
  nothing_here:
    dst_port: 1"""))
    engine = DetectionEngine(load_rules([rule]))
    packets = decode_file(PCAPS / "zeek_ssh_sshguess.pcap").combine_chunks().to_batches()[0]
    hits = engine.packet_hits(packets)
    # the same selection, computed independently: IPv4-mapped bytes 12..14 are 192.168.56
    dst = np.frombuffer(packets.column("dst_ip").buffers()[1], dtype=np.uint8).reshape(-1, 16)
    in_net = (dst[:, 10:15] == [0xFF, 0xFF, 192, 168, 56]).all(axis=1)
    ssh = pc.fill_null(pc.starts_with(packets.column("ssh_banner"), "SSH-2.0", ignore_case=True), False)
    big = pc.greater_equal(packets.column("frame_len"), 1000)
    expected = in_net & np.asarray(pc.or_(ssh, big).to_numpy(zero_copy_only=False))
    assert pc.sum(hits.column("n")).as_py() == expected.sum() > 0
    assert pc.all(pc.starts_with(hits.column("dst_ip"), "192.168.56.")).as_py()


def test_bad_rule_file_is_one_error_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(RULE.replace("condition: sel", "condition: sel or"))
    out = tmp_path / "out"
    assert main(["replay", str(PCAPS / "zeek_ssh_sshguess.pcap"), "--out", str(out), "--rules", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yml:" in err[0] and not out.exists()
