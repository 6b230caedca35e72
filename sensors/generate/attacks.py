"""Attacks the public record lacks, or lacks under a permissive licence, as small scapy captures.

Used by the tests and ``liaowang evaluate``: each capture fires one detector; the
same seed and time base give the same bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.gtp_v2 import IE_IMSI, GTPV2CreateSessionRequest
from scapy.contrib.gtp_v2 import GTPHeader as GTPv2Header
from scapy.contrib.modbus import ModbusADURequest, ModbusPDU03ReadHoldingRegistersRequest, ModbusPDU06WriteSingleRegisterRequest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from sensors.capture.pcap import global_header


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    """A pcap from (seconds, frame) pairs: floods need thousands of packets, fast."""
    with open(path, "wb") as f:
        f.write(global_header(snaplen=65535))
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
    from sensors.generate.control_plane import control_plane_attacks  # it builds on this module's helpers

    tmp.mkdir(parents=True, exist_ok=True)
    t0 = 1_700_000_000.0
    return {
        **control_plane_attacks(tmp, t0),
        "syn_flood": write_pcap(tmp / "syn.pcap", [(t0 + i * 0.001, f) for i, f in enumerate(_variants(syn, 3000, 34))]),
        "udp_flood": write_pcap(tmp / "udp.pcap", [(t0 + i * 0.0004, udp) for i in range(12000)]),
        "icmp_flood": write_pcap(tmp / "icmp.pcap", [(t0 + i * 0.004, icmp) for i in range(1500)]),
        # 14 + 16: the last two bytes of the destination address
        "sweep": write_pcap(tmp / "sweep.pcap", [(t0 + i * 0.1, f) for i, f in enumerate(_variants(sweep, 80, 32))]),
        "dns_tunnel": write_pcap(tmp / "dns_tunnel.pcap", [
            (t0 + i * 0.5, _eth(IP(src="10.0.0.20", dst="10.0.0.53") / UDP(sport=30000 + i, dport=53)
                                / DNS(id=i, rd=1, qd=DNSQR(qname=name, qtype="TXT" if i % 2 else "A"))))
            for i, name in enumerate(_encoded_names(40, "t.exfil-example.com.cn"))]),
        "icmp_tunnel": write_pcap(tmp / "icmp_tunnel.pcap", [
            (t0 + i * 2.0, _eth(IP(src="10.0.0.21", dst="203.0.113.9") / ICMP(type=8, id=77, seq=i)
                                / (b"\x17" * (80 + 37 * i))))
            for i in range(12)]),
        "cleartext_credentials": write_pcap(tmp / "cleartext.pcap", [
            (t0, _tcp("10.0.0.22", "10.0.0.110", 110, b"USER alice\r\n")),
            (t0 + 1, _tcp("10.0.0.22", "10.0.0.110", 110, b"PASS s3cret\r\n")),
            (t0 + 2, _tcp("10.0.0.22", "10.0.0.143", 143, b"a001 LOGIN alice s3cret\r\n")),
            (t0 + 3, _tcp("10.0.0.22", "10.0.0.80", 80,
                          b"GET /admin HTTP/1.1\r\nHost: nas\r\nAuthorization: Basic YWxpY2U6czNjcmV0\r\n\r\n")),
            (t0 + 4, _tcp("10.0.0.22", "10.0.0.80", 8080,
                          b"GET / HTTP/1.1\r\nHost: nas\r\nAuthorization: Bearer eyJhbGciOi\r\n\r\n")),
        ]),
        "smb1": write_pcap(tmp / "smb1.pcap", [
            (t0, _tcp("10.0.0.23", "10.0.0.45", 445, b"\x00\x00\x00\x2f\xffSMBr" + bytes(38)))]),
        "beaconing": write_pcap(tmp / "beacon.pcap", [
            (t0 + i * 30.0 + 0.2 * (i % 3) + k * 0.05,
             _eth(IP(src="10.0.0.30", dst="203.0.113.50") / TCP(sport=41000 + i, dport=443, flags=flags) / data))
            for i in range(12) for k, (flags, data) in enumerate([("S", b""), ("PA", b"b" * 180), ("FA", b"")])]),
        "teid_spoofing": write_pcap(tmp / "teid_spoofing.pcap", [
            (t0 + i, _eth(IP(src="172.16.0.2", dst="172.16.0.1") / UDP(sport=2152, dport=2152)
                          / GTP_U_Header(teid=0x100, gtp_type=255) / IP(src=src, dst=dst) / UDP(sport=5000 + i, dport=53)
                          / b"q"))
            for i, (src, dst) in enumerate([("10.45.0.2", "8.8.8.8"), ("10.45.0.2", "1.1.1.1"),
                                            ("10.45.0.2", "9.9.9.9"), ("10.45.0.99", "8.8.4.4")])]),
        "large_transfer": write_pcap(tmp / "upload.pcap", [
            (t0 + i * 0.001, frame) for i, frame in enumerate(
                [_eth(IP(src="10.0.0.40", dst="198.51.100.77") / TCP(sport=42000, dport=443, flags="S"))]
                + [_eth(IP(src="10.0.0.40", dst="198.51.100.77") / TCP(sport=42000, dport=443, flags="A")
                        / (b"u" * 1400))] * 15000)]),
        # an MME/SGW flooded with Create Session Requests (GTPv2-C, TS 29.274), 1,500 in 5 s
        "gtpc_flood": write_pcap(tmp / "gtpc_flood.pcap", [(t0 + i * 0.0033, f) for i, f in enumerate(_variants(
            _eth(IP(src="198.51.100.30", dst="10.10.0.2") / UDP(sport=2123, dport=2123)
                 / GTPv2Header(gtp_type=32, P=0, T=1, teid=0, seq=1)
                 / GTPV2CreateSessionRequest(IE_list=[IE_IMSI(IMSI="001010000000001")])), 1500, 51))]),  # seq
        # G-PDUs for guessed TEIDs, each answered by the UPF with an Error Indication
        "gtpu_unknown_teid": write_pcap(tmp / "gtpu_unknown_teid.pcap", [
            (t0 + i * 0.5 + k * 0.001, frame) for i in range(40) for k, frame in enumerate([
                _eth(IP(src="198.51.100.31", dst="172.16.0.1") / UDP(sport=2152, dport=2152)
                     / GTP_U_Header(teid=0x5000 + 97 * i, gtp_type=255) / IP(src="10.45.0.7", dst="10.10.0.9")
                     / UDP(sport=5000, dport=5001) / b"probe"),
                _eth(IP(src="172.16.0.1", dst="198.51.100.31") / UDP(sport=2152, dport=2152)
                     / GTP_U_Header(teid=0, gtp_type=26, S=1)  # IEs: TEID Data I, GTP-U Peer Address
                     / (struct.pack("!BIBH", 16, 0x5000 + 97 * i, 133, 4) + bytes([172, 16, 0, 1])))])]),
        # a gNB's uplink to the UPF for over an hour (the warm-up), then G-PDUs from a new outer source
        "gtpu_unexpected_peer": write_pcap(tmp / "gtpu_peer.pcap", [
            (t0 + t, _eth(IP(src=peer, dst="172.16.0.1") / UDP(sport=2152, dport=2152)
                          / GTP_U_Header(teid=0x200 + k, gtp_type=255) / IP(src=f"10.45.0.{k + 10}", dst="1.1.1.1")
                          / UDP(sport=6000 + k, dport=53) / b"q"))
            for k, (t, peer) in enumerate([(i * 300.0, "172.16.0.2") for i in range(14)]
                                          + [(3900.0 + i, "198.51.100.40") for i in range(3)])]),
        # a SCADA master polls a PLC; later another host on the plant network writes a register
        "ics_new_master": write_pcap(tmp / "ics_new_master.pcap", [
            (t0 + i * 1.0, _tcp("10.20.0.10", "10.20.0.50", 502, bytes(ModbusADURequest(transId=i, unitId=1)
                                / ModbusPDU03ReadHoldingRegistersRequest(startAddr=0, quantity=10)), sport=40100))
            for i in range(30)] + [
            (t0 + 30.5, _tcp("10.20.0.66", "10.20.0.50", 502, bytes(ModbusADURequest(transId=1, unitId=1)
                             / ModbusPDU06WriteSingleRegisterRequest(registerAddr=40, registerValue=9999)),
                             sport=40200))]),
        # GB 11643's own example number, the well-known Visa test card, a mobile number and a SUPI
        "personal_data": write_pcap(tmp / "personal_data.pcap", [
            (t0, _tcp("10.0.0.25", "10.0.0.81", 80,
                      b"POST /register HTTP/1.1\r\nHost: crm\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 78\r\n\r\nname=zhang&id=11010519491231002X&tel=13812345678&card=4111111111111111")),
            (t0 + 1, _tcp("10.0.0.25", "10.0.0.81", 80,
                          b"GET /nudm-sdm/v2/imsi-460001234567890/am-data HTTP/1.1\r\nHost: udm\r\n\r\n")),
        ]),
        "old_web_server": write_pcap(tmp / "old_web.pcap", [
            (t0, _tcp("10.0.0.80", "10.0.0.24", 40002,
                      b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.49 (Unix)\r\nContent-Length: 0\r\n\r\n", sport=80))]),
    }


