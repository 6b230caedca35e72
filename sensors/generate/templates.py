"""Flow templates for the traffic generator, built once with scapy.

A template is the packet sequence of one flow class (an HTTP download, a TLS
session, a DNS lookup, a PFCP session exchange...) between placeholder
endpoints.  The generator copies the bytes for every flow instance and patches
the fields that differ (addresses, ports, TEIDs, SEIDs, names) at offsets taken
from scapy's layer positions, so scapy runs a few hundred times, not once per
packet.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
NAME_DIGITS = b"0000000"  # the generator writes a flow number here
NAME = b"h" + NAME_DIGITS + b".example.com"
MSS = 1448


@dataclass
class TemplatePacket:
    raw: bytes
    c2s: bool  # client -> server (uplink when tunnelled)
    gap_ms: float  # typical time since the previous packet of the flow
    ip: int  # offset of the innermost IPv4 header
    l4: int  # offset of its transport header (-1 for ICMP)
    outer_ip: int = -1  # offset of the outer IPv4 header when tunnelled in GTP-U
    gtp: int = -1  # offset of the GTP-U header
    name: int = -1  # offset of NAME_DIGITS (DNS / SNI / Host), -1 if none
    seid: int = -1  # offset of a PFCP SEID, -1 if none


@dataclass
class FlowTemplate:
    name: str
    packets: list[TemplatePacket] = field(default_factory=list)
    gtp: bool = False
    server_port: int = 0


def _offsets(p: Packet) -> dict[str, list[int]]:
    raw_len = len(bytes(p))
    out: dict[str, list[int]] = {}
    i = 0
    while (layer := p.getlayer(i)) is not None:
        out.setdefault(type(layer).__name__, []).append(raw_len - len(bytes(layer)))
        i += 1
    return out


def _tls_client_hello() -> bytes:
    host = NAME
    sni = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    exts = struct.pack("!HH", 0, len(sni)) + sni
    exts += struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"  # supported_versions: 1.3, 1.2
    body = b"\x03\x03" + bytes(32) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x13\x02" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _tls_server_hello() -> bytes:
    exts = struct.pack("!HHH", 43, 2, 0x0304)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x02" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs + b"\x17\x03\x03" + struct.pack("!H", 1200) + bytes(1200)


def _tcp_session(request: bytes, responses: list[bytes], client_data: list[bytes] | None = None) -> list[tuple[bool, str, bytes]]:
    """(c2s, flags, payload) of a TCP connection: handshake, exchange, close."""
    seq: list[tuple[bool, str, bytes]] = [(True, "S", b""), (False, "SA", b""), (True, "A", b"")]
    seq.append((True, "PA", request))
    for i, r in enumerate(responses):
        seq.append((False, "A" if i < len(responses) - 1 else "PA", r))
        if i % 2 == 1:
            seq.append((True, "A", b""))
    for d in client_data or []:
        seq.append((True, "PA", d))
        seq.append((False, "A", b""))
    seq += [(True, "FA", b""), (False, "FA", b""), (True, "A", b"")]
    return seq


def _http(n_data: int) -> list[tuple[bool, str, bytes]]:
    req = b"GET /index.html HTTP/1.1\r\nHost: " + NAME + b"\r\nUser-Agent: liaowang-gen/1.0\r\nAccept: */*\r\n\r\n"
    first = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 99999\r\n\r\n"
    return _tcp_session(req, [first + bytes(MSS - len(first))] + [bytes(MSS)] * (n_data - 1))


def _tls(n_data: int) -> list[tuple[bool, str, bytes]]:
    return _tcp_session(_tls_client_hello(), [_tls_server_hello()] + [bytes(MSS)] * (n_data - 1), [bytes(300)] * 2)


def _ssh(n_data: int) -> list[tuple[bool, str, bytes]]:
    seq = _tcp_session(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n", [b"SSH-2.0-OpenSSH_9.6\r\n"] + [bytes(600)] * n_data,
                       [bytes(120)] * 3)
    return seq


def _modbus(n_req: int) -> list[tuple[bool, str, bytes]]:
    req = struct.pack("!HHHBBHH", 1, 0, 6, 1, 3, 0, 10)  # read 10 holding registers
    resp = struct.pack("!HHHBBB", 1, 0, 23, 1, 3, 20) + bytes(20)
    seq: list[tuple[bool, str, bytes]] = [(True, "S", b""), (False, "SA", b""), (True, "A", b"")]
    for _ in range(n_req):
        seq += [(True, "PA", req), (False, "PA", resp)]
    return seq + [(True, "FA", b""), (False, "FA", b""), (True, "A", b"")]


def _wrap(inner: Packet, c2s: bool, gtp: bool) -> Packet:
    eth = Ether(src=CLIENT_MAC if c2s else SERVER_MAC, dst=SERVER_MAC if c2s else CLIENT_MAC)
    if not gtp:
        return eth / inner
    outer = IP(src="172.31.0.1", dst="172.31.0.2") if c2s else IP(src="172.31.0.2", dst="172.31.0.1")
    # PDU Session Container: uplink (type 1) or downlink (type 0) information, QFI 9
    psc = GTPPDUSessionContainer(type=1 if c2s else 0, QFI=9)
    return eth / outer / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=0, next_ex=0x85) / psc / inner


def _inner_ip(c2s: bool) -> IP:
    return IP(src="10.255.0.1", dst="10.255.0.2", id=1) if c2s else IP(src="10.255.0.2", dst="10.255.0.1", id=1)


#: (client -> server?, packet from the IP layer up, typical gap to the previous packet in ms)
Step = tuple[bool, Packet, float]


def _build(name: str, steps: Sequence[Step], gtp: bool, server_port: int) -> FlowTemplate:
    t = FlowTemplate(name, gtp=gtp, server_port=server_port)
    for c2s, inner, gap in steps:
        p = _wrap(inner, c2s, gtp)
        raw = bytes(p)
        off = _offsets(p)
        ips = off["IP"]
        l4 = (off.get("TCP") or off.get("UDP") or [-1])[-1]
        tp = TemplatePacket(raw, c2s, gap, ip=ips[-1], l4=l4 if l4 > ips[-1] else -1)
        if gtp:
            tp.outer_ip, tp.gtp = ips[0], off["GTP_U_Header"][0]
        pos = raw.find(NAME_DIGITS)
        tp.name = pos
        t.packets.append(tp)
    return t


def _tcp_template(name: str, session: list[tuple[bool, str, bytes]], port: int, gtp: bool) -> FlowTemplate:
    steps: list[Step] = []
    seq = {True: 1000, False: 5000}  # next sequence number of each side
    for i, (c2s, flags, payload) in enumerate(session):
        sport, dport = (61001, port) if c2s else (port, 61001)
        ack = seq[not c2s] if "A" in flags else 0
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq[c2s], ack=ack, window=65535)
        seq[c2s] += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        steps.append((c2s, _inner_ip(c2s) / tcp / Raw(payload) if payload else _inner_ip(c2s) / tcp,
                      30.0 if i == 0 else (20.0 if i < 3 else 2.0)))
    return _build(name, steps, gtp, port)


def _dns_template(gtp: bool) -> FlowTemplate:
    q = DNS(id=7, rd=1, qd=DNSQR(qname=NAME, qtype="A"))
    r = DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=NAME, qtype="A"), an=DNSRR(rrname=NAME, rdata="93.184.216.34"))
    steps = [(True, _inner_ip(True) / UDP(sport=61001, dport=53) / q, 0.0),
             (False, _inner_ip(False) / UDP(sport=53, dport=61001) / r, 15.0)]
    return _build("gtp_dns" if gtp else "dns", steps, gtp, 53)


def _icmp_template(gtp: bool) -> FlowTemplate:
    steps = []
    for i in range(4):
        steps.append((True, _inner_ip(True) / ICMP(type=8, id=7, seq=i) / Raw(bytes(56)), 1000.0 if i else 0.0))
        steps.append((False, _inner_ip(False) / ICMP(type=0, id=7, seq=i) / Raw(bytes(56)), 12.0))
    return _build("gtp_icmp" if gtp else "icmp", steps, gtp, 0)


def _udp_stream_template() -> FlowTemplate:
    steps = [(True, _inner_ip(True) / UDP(sport=61001, dport=5004) / Raw(bytes(172)), 20.0) for _ in range(60)]
    steps += [(False, _inner_ip(False) / UDP(sport=5004, dport=61001) / Raw(bytes(60)), 5.0) for _ in range(2)]
    return _build("rtp", steps, False, 5004)


def _pfcp_template() -> FlowTemplate:
    """One N4 session exchange between fixed SMF and UPF addresses (all instances share the flow)."""

    def pfcp(msg: int, body: bytes) -> bytes:
        hdr = struct.pack("!BBH", 0x21, msg, 12 + len(body)) + struct.pack("!Q", 0) + b"\x00\x00\x01\x00"
        return hdr + body

    node_id = struct.pack("!HHB", 60, 5, 0) + bytes([10, 200, 0, 1])
    fseid = struct.pack("!HHB", 57, 13, 2) + struct.pack("!Q", 0) + bytes([10, 200, 0, 1])
    cause = struct.pack("!HHB", 19, 1, 1)
    msgs = [(True, 50, node_id + fseid + bytes(120)), (False, 51, node_id + cause + fseid),
            (True, 52, bytes(60)), (False, 53, cause), (True, 54, b""), (False, 55, cause)]
    steps = []
    for i, (c2s, msg, body) in enumerate(msgs):
        ip = IP(src="10.200.0.1", dst="10.200.0.2", id=1) if c2s else IP(src="10.200.0.2", dst="10.200.0.1", id=1)
        steps.append((c2s, ip / UDP(sport=8805, dport=8805) / Raw(pfcp(msg, body)), 5.0 if i % 2 else 400.0))
    t = _build("pfcp", steps, False, 8805)
    for tp in t.packets:
        tp.seid = tp.ip + 20 + 8 + 4
    return t


def _scan_template() -> FlowTemplate:
    steps = [(True, _inner_ip(True) / TCP(sport=61001, dport=61002, flags="S", seq=1, window=1024), 0.0),
             (False, _inner_ip(False) / TCP(sport=61002, dport=61001, flags="RA", seq=0, ack=2), 0.5)]
    return _build("scan", steps, False, 0)


def all_templates() -> dict[str, FlowTemplate]:
    """Every flow class, keyed by name (scapy runs once per template packet)."""
    out: dict[str, FlowTemplate] = {}
    for gtp in (False, True):
        prefix = "gtp_" if gtp else ""
        out[prefix + "http"] = _tcp_template(prefix + "http", _http(60), 80, gtp)
        out[prefix + "http_small"] = _tcp_template(prefix + "http_small", _http(4), 80, gtp)
        out[prefix + "tls"] = _tcp_template(prefix + "tls", _tls(80), 443, gtp)
        out[prefix + "dns"] = _dns_template(gtp)
        out[prefix + "icmp"] = _icmp_template(gtp)
    out["ssh"] = _tcp_template("ssh", _ssh(20), 22, False)
    out["modbus"] = _tcp_template("modbus", _modbus(15), 502, False)
    out["rtp"] = _udp_stream_template()
    out["pfcp"] = _pfcp_template()
    out["scan"] = _scan_template()
    return out
