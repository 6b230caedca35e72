"""Decoder cases the public captures lack, crafted with scapy (real bytes, one case each)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pyarrow as pa
import pytest
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from detection.flows.assembler import FlowAssembler
from sensors.capture.pcap import global_header
from sensors.capture.source import read_frames
from sensors.decode import decode
from sensors.schema import AppProto, DecodeStatus, TunnelType

ETH = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def decode_packets(tmp_path: Path, packets: list[Packet], linktype: int | None = None) -> list[dict]:
    path = tmp_path / "crafted.pcap"
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i
    wrpcap(str(path), packets, linktype=linktype)
    table = pa.Table.from_batches([decode(b) for b in read_frames(str(path))])
    return table.drop(["ts"]).to_pylist()


def ip(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a)


INNER = IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=1234, dport=443, flags="S")


@pytest.mark.parametrize(
    "frame, linktype",
    [
        (Ether(**ETH) / INNER, None),
        (CookedLinux(proto=0x0800) / INNER, 113),
        (Loopback(type=2) / INNER, 0),
        (INNER, 101),
        (INNER, 228),
    ],
    ids=["ethernet", "linux_sll", "null", "raw", "ipv4"],
)
def test_link_types(tmp_path: Path, frame: Packet, linktype: int | None) -> None:
    (r,) = decode_packets(tmp_path, [frame], linktype)
    assert r["decode_status"] == 0
    assert (ip(r["src_ip"]), ip(r["dst_ip"]), r["src_port"], r["dst_port"]) == ("10.0.0.1", "8.8.8.8", 1234, 443)
    assert r["tcp_flags"] == 0x02


def test_linux_sll2(tmp_path: Path) -> None:
    # SLL2 (LINKTYPE 276): protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8)
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, bytes(8))
    pkt = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=53) / Raw(b"x"))
    path = tmp_path / "sll2.pcap"
    with open(path, "wb") as f:
        f.write(global_header(276, 65535))
        data = sll2 + pkt
        f.write(struct.pack("<IIII", 1_700_000_000, 0, len(data), len(data)) + data)
    (r,) = pa.Table.from_batches([decode(b) for b in read_frames(str(path))]).drop(["ts"]).to_pylist()
    assert (r["ip_version"], ip(r["src_ip"]), r["dst_port"]) == (6, "2001:db8::1", 53)


def test_vlan_qinq_and_mpls(tmp_path: Path) -> None:
    rows = decode_packets(tmp_path, [
        Ether(**ETH) / Dot1Q(vlan=100) / INNER,
        Ether(**ETH) / Dot1AD(vlan=200) / Dot1Q(vlan=300) / INNER,
        Ether(**ETH, type=0x8847) / MPLS(label=1001, s=0) / MPLS(label=1002, s=1) / INNER,
    ])
    assert [(r["vlan_id"], r["vlan_depth"]) for r in rows[:2]] == [(100, 1), (200, 2)]
    assert rows[2]["mpls_label"] == 1001
    assert all(ip(r["dst_ip"]) == "8.8.8.8" and r["dst_port"] == 443 for r in rows)


def test_ipv6_extension_chain_and_fragments(tmp_path: Path) -> None:
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    rows = decode_packets(tmp_path, [
        Ether(**ETH) / base / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / UDP(sport=1, dport=2) / Raw(b"abcd"),
        Ether(**ETH) / base / IPv6ExtHdrFragment(offset=0, m=1, id=77) / UDP(sport=1, dport=2) / Raw(b"abcd"),
        Ether(**ETH) / base / IPv6ExtHdrFragment(offset=100, m=0, id=77) / Raw(b"rest"),
    ])
    assert (rows[0]["ip_proto"], rows[0]["dst_port"], rows[0]["ip_hdr_len"]) == (17, 2, 40 + 8 + 8)
    assert (rows[1]["ip_is_fragment"], rows[1]["ip_id"], rows[1]["dst_port"]) == (True, 77, 2)
    assert (rows[2]["ip_frag_offset"], rows[2]["dst_port"]) == (800, None)  # no transport header in later fragments


def gtp(inner: Packet | None, teid: int, msg: int = 255, qfi: int | None = None) -> Packet:
    outer = Ether(**ETH) / IP(src="172.16.0.1", dst="172.16.255.1") / UDP(sport=2152, dport=2152)
    if qfi is not None:
        hdr = GTP_U_Header(teid=teid, gtp_type=msg, next_ex=0x85) / GTPPDUSessionContainer(type=1, QFI=qfi)
    else:
        hdr = GTP_U_Header(teid=teid, gtp_type=msg)
    return outer / hdr / inner if inner is not None else outer / hdr


def test_gtpu_messages_and_gtp_in_gtp(tmp_path: Path) -> None:
    injected = IP(src="10.0.0.1", dst="172.16.255.1") / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=0xBAD) / INNER
    rows = decode_packets(tmp_path, [
        gtp(INNER, 0x1234, qfi=9),
        gtp(None, 0, msg=1),  # echo request
        gtp(None, 0x1234, msg=254),  # end marker
        gtp(injected, 0x1234),
    ])
    first = rows[0]
    assert (first["teid"], first["gtpu_qfi"], first["gtpu_pdu_type"], first["tunnel_type"]) == (0x1234, 9, 1, TunnelType.GTPU)
    assert (ip(first["src_ip"]), ip(first["tunnel_src_ip"]), first["dst_port"]) == ("10.0.0.1", "172.16.0.1", 443)
    assert (rows[1]["gtpu_msg_type"], rows[1]["tunnel_type"], rows[1]["app_proto"]) == (1, None, AppProto.GTPU)
    assert (rows[2]["gtpu_msg_type"], rows[2]["teid"]) == (254, 0x1234)
    assert rows[3]["gtp_in_gtp"] is True and rows[3]["teid"] == 0x1234  # the outer tunnel is kept
    assert rows[0]["gtp_in_gtp"] is None


def test_malformed_headers_are_marked(tmp_path: Path) -> None:
    good = bytes(Ether(**ETH) / INNER)
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x43  # IHL 3
    bad_offset = bytearray(good)
    bad_offset[14 + 20 + 12] = 0x30  # TCP data offset 3
    rows = decode_packets(tmp_path, [Ether(good[:30]), Ether(bytes(bad_ihl)), Ether(bytes(bad_offset)),
                                     gtp(Raw(b"\x00" * 20), 5)])
    assert [r["decode_status"] for r in rows] == [DecodeStatus.TRUNCATED, DecodeStatus.BAD_HEADER_LENGTH,
                                                   DecodeStatus.BAD_HEADER_LENGTH, DecodeStatus.UNKNOWN_ENCAPSULATION]


def test_http2_with_preface_and_modbus(tmp_path: Path) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack("!I", 0)[1:] + b"\x04\x00" + struct.pack("!I", 0)
    modbus = struct.pack("!HHHBB", 1, 0, 6, 1, 6) + struct.pack("!HH", 1, 3)  # write single register
    rows = decode_packets(tmp_path, [
        Ether(**ETH) / IP(src="10.1.1.1", dst="10.1.1.2") / TCP(sport=40000, dport=29510, flags="PA") / Raw(preface),
        Ether(**ETH) / IP(src="10.1.1.1", dst="10.1.1.3") / TCP(sport=40001, dport=502, flags="PA") / Raw(modbus),
    ])
    assert (rows[0]["app_proto"], rows[0]["http2_preface"], rows[0]["http2_frame_type"]) == (AppProto.HTTP2, True, 4)
    assert (rows[1]["app_proto"], rows[1]["modbus_func"]) == (AppProto.MODBUS, 6)


def test_pcapng_two_interfaces_with_their_own_resolution(tmp_path: Path) -> None:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    eth = bytes(Ether(**ETH) / INNER)
    raw = bytes(IP(src="10.9.9.9", dst="10.8.8.8") / ICMP())
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_eth = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB", 9, 1, 6) + bytes(3) + bytes(4))
    idb_raw = block(1, struct.pack("<HHI", 101, 0, 65535) + struct.pack("<HHB", 9, 1, 9) + bytes(3) + bytes(4))
    t_us, t_ns = 1_700_000_000_123_456, 1_700_000_001_000_000_007

    def epb(iface: int, ts: int, data: bytes) -> bytes:
        return block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)

    spb = block(3, struct.pack("<I", len(eth)) + eth)
    path = tmp_path / "two.pcapng"
    path.write_bytes(shb + idb_eth + idb_raw + epb(0, t_us, eth) + epb(1, t_ns, raw) + spb + epb(5, t_us, eth))
    batches = list(read_frames(str(path)))
    ts = [int(x) for b in batches for x in b.ts_ns]
    assert ts[:2] == [t_us * 1000, t_ns]
    rows = pa.Table.from_batches([decode(b) for b in batches]).drop(["ts"]).to_pylist()
    assert [r["link_type"] for r in rows] == [1, 101, 1, 0xFFFF]
    assert (ip(rows[1]["src_ip"]), rows[1]["icmp_type"]) == ("10.9.9.9", 8)
    assert rows[2]["dst_port"] == 443  # simple packet block, interface 0
    assert rows[3]["decode_status"] == DecodeStatus.UNKNOWN_INTERFACE


def test_flow_timeouts_and_tcp_port_reuse(tmp_path: Path) -> None:
    a, b = {"src": "10.0.0.1", "dst": "10.0.0.2"}, {"src": "10.0.0.2", "dst": "10.0.0.1"}
    seq = [(0.0, IP(**a) / TCP(sport=1, dport=80, flags="S")), (0.1, IP(**b) / TCP(sport=80, dport=1, flags="SA")),
           (0.2, IP(**a) / TCP(sport=1, dport=80, flags="R")), (0.3, IP(**a) / TCP(sport=1, dport=80, flags="S")),
           (0.0, IP(**a) / UDP(sport=5, dport=53)), (119.9, IP(**b) / UDP(sport=53, dport=5)),
           (239.9, IP(**a) / UDP(sport=5, dport=53))]
    path = tmp_path / "t.pcap"
    pkts = []
    for t, p in seq:
        p = Ether(**ETH) / p
        p.time = 1_700_000_000 + t
        pkts.append(p)
    pkts.sort(key=lambda p: float(p.time))
    wrpcap(str(path), pkts)
    fa = FlowAssembler(idle_timeout_s=120)
    flows = pa.concat_tables([*(fa.update(decode(x)) for x in read_frames(str(path))), fa.flush()])
    got = sorted((r["ip_proto"], r["bidirectional_packets"], r["expiration_reason"])
                 for r in flows.select(["ip_proto", "bidirectional_packets", "expiration_reason"]).to_pylist())
    # TCP: RST then a new SYN -> two flows (the second idles out when the clock reaches 240 s);
    # UDP: a gap of 119.9 s stays in the flow, one of 120 s starts a new one
    assert got == [(6, 1, "idle"), (6, 3, "tcp_reuse"), (17, 1, "end_of_input"), (17, 2, "idle")]
