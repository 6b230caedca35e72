"""The packet batch: one Arrow table row per captured frame.

Every field is declared once here with its type and meaning; ``docs/schemas.md``
is generated from these declarations (``python -m ingest.schemadoc``).
Bump ``PACKET_SCHEMA_VERSION`` on any change that is not a pure addition.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa

PACKET_SCHEMA_VERSION = 1


class DecodeStatus(enum.IntEnum):
    """Why a packet could not be decoded completely (first problem found wins)."""

    OK = 0
    TRUNCATED = 1  # a header runs past the captured bytes
    BAD_HEADER_LENGTH = 2  # a header length field is impossible (IHL < 5, TCP offset < 5...)
    BAD_TOTAL_LENGTH = 3  # IP/UDP length smaller than its own header
    UNKNOWN_LINK_TYPE = 4  # the capture's link type is not decoded
    UNKNOWN_ENCAPSULATION = 5  # a tunnel carries something that is not IP/Ethernet
    BAD_IP_VERSION = 6  # the version nibble disagrees with the ethertype
    UNKNOWN_INTERFACE = 7  # pcapng packet names an interface that was never described
    TOO_MANY_LAYERS = 8  # more nested tunnels / extension headers than decoded


class AppProto(enum.IntEnum):
    """Application hint: what the first packet bytes above L4 look like."""

    NONE = 0
    DNS = 1
    TLS = 2
    HTTP = 3
    HTTP2 = 4
    SSH = 5
    MODBUS = 6
    PFCP = 7
    GTPC = 8
    GTPU = 9
    DIAMETER = 10
    NGAP = 11
    S1AP = 12
    ARP = 13
    SMB = 14
    MAIL = 15  # POP3 / IMAP / SMTP commands
    FTP = 16
    DNP3 = 17
    S7COMM = 18


class TunnelType(enum.IntEnum):
    NONE = 0
    GTPU = 1
    GRE = 2
    VXLAN = 3
    GENEVE = 4
    IPIP = 5  # IPv4/IPv6 directly in IPv4/IPv6
    ERSPAN = 6


@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType
    doc: str


IP = pa.binary(16)

PACKET_FIELDS: list[Field] = [
    Field("ts", pa.timestamp("ns", tz="UTC"), "capture timestamp"),
    Field("frame_len", pa.uint32(), "original length of the frame on the wire, bytes"),
    Field("capture_len", pa.uint32(), "bytes captured"),
    Field("link_type", pa.uint16(), "pcap LINKTYPE of the frame's interface"),
    Field("interface_id", pa.uint16(), "pcapng interface index (0 for pcap)"),
    Field("file_index", pa.uint16(), "index of the source file in this replay"),
    Field("file_offset", pa.int64(), "byte offset of the frame's record in its (decompressed) file"),
    Field("decode_status", pa.uint8(), "DecodeStatus code; 0 = fully decoded"),
    Field("eth_type", pa.uint16(), "innermost ethertype (after VLAN/MPLS), null without L2"),
    Field("vlan_id", pa.uint16(), "outermost 802.1Q/802.1ad VLAN id, null if untagged"),
    Field("vlan_depth", pa.uint8(), "number of VLAN tags (QinQ = 2)"),
    Field("mpls_label", pa.uint32(), "top MPLS label, null without MPLS"),
    Field("ip_version", pa.uint8(), "4 or 6 (inner header when tunnelled), null if not IP"),
    Field("src_ip", IP, "source address, 16 bytes (IPv4 mapped as ::ffff:a.b.c.d); inner when tunnelled"),
    Field("dst_ip", IP, "destination address, same encoding"),
    Field("ip_proto", pa.uint8(), "transport protocol after the IPv6 extension chain"),
    Field("ip_ttl", pa.uint8(), "IPv4 TTL / IPv6 hop limit"),
    Field("ip_hdr_len", pa.uint16(), "IP header bytes incl. IPv4 options / IPv6 extension headers"),
    Field("ip_len", pa.uint16(), "IP total length (IPv4) or 40 + payload length (IPv6), bytes"),
    Field("ip_id", pa.uint32(), "IPv4 identification / IPv6 fragment identification"),
    Field("ip_is_fragment", pa.bool_(), "packet is a fragment (MF set or offset > 0)"),
    Field("ip_frag_offset", pa.uint16(), "fragment offset in bytes"),
    Field("src_port", pa.uint16(), "TCP/UDP/SCTP source port; null for other protocols"),
    Field("dst_port", pa.uint16(), "TCP/UDP/SCTP destination port"),
    Field("tcp_flags", pa.uint16(), "TCP flags (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ECE CWR NS)"),
    Field("tcp_seq", pa.uint32(), "TCP sequence number"),
    Field("tcp_ack", pa.uint32(), "TCP acknowledgement number"),
    Field("tcp_window", pa.uint16(), "TCP window (unscaled)"),
    Field("tcp_hdr_len", pa.uint8(), "TCP header bytes incl. options"),
    Field("icmp_type", pa.uint8(), "ICMP / ICMPv6 type"),
    Field("icmp_code", pa.uint8(), "ICMP / ICMPv6 code"),
    Field("sctp_chunk_types", pa.uint32(), "bitmask of SCTP chunk types 0..31 present (1 << type)"),
    Field("sctp_ppid", pa.uint32(), "payload protocol id of the first SCTP DATA chunk (NGAP 60, S1AP 18, Diameter 46/47)"),
    Field("payload_len", pa.uint32(), "transport payload bytes (within the IP length, not the capture)"),
    Field("app_proto", pa.uint8(), "AppProto code of the transport payload"),
    Field("tunnel_type", pa.uint8(), "TunnelType of the innermost decapsulated tunnel; null if none"),
    Field("tunnel_depth", pa.uint8(), "number of tunnel layers removed"),
    Field("tunnel_src_ip", IP, "outer source address of the innermost tunnel"),
    Field("tunnel_dst_ip", IP, "outer destination address of the innermost tunnel"),
    Field("teid", pa.uint32(), "GTP-U tunnel endpoint id (decapsulated G-PDUs and other GTP-U messages)"),
    Field("gtpu_msg_type", pa.uint8(), "GTP-U message type (255 G-PDU, 1/2 echo, 26 error indication, 254 end marker)"),
    Field("gtpu_qfi", pa.uint8(), "QoS flow id from the PDU Session Container extension (TS 38.415)"),
    Field("gtpu_pdu_type", pa.uint8(), "PDU Session Container PDU type: 0 downlink, 1 uplink"),
    Field("gtp_in_gtp", pa.bool_(), "the GTP-U payload is itself a GTP-U packet (injection)"),
    Field("vni", pa.uint32(), "VXLAN / Geneve network id, GRE key"),
    Field("pfcp_msg_type", pa.uint8(), "PFCP message type (TS 29.244 7.3)"),
    Field("pfcp_seid", pa.uint64(), "PFCP session endpoint id, null for node messages"),
    Field("pfcp_seq", pa.uint32(), "PFCP sequence number"),
    Field("gtpc_version", pa.uint8(), "GTP-C version (1 or 2)"),
    Field("gtpc_msg_type", pa.uint8(), "GTP-C message type"),
    Field("gtpc_teid", pa.uint32(), "GTP-C TEID, null when absent"),
    Field("gtpc_seq", pa.uint32(), "GTP-C sequence number"),
    Field("diameter_cmd", pa.uint32(), "Diameter command code"),
    Field("diameter_app_id", pa.uint32(), "Diameter application id"),
    Field("diameter_is_request", pa.bool_(), "Diameter R flag"),
    Field("http2_frame_type", pa.uint8(), "type of the first HTTP/2 frame in the segment"),
    Field("http2_stream_id", pa.uint32(), "stream id of the first HTTP/2 frame"),
    Field("http2_preface", pa.bool_(), "segment starts with the HTTP/2 connection preface"),
    Field("dns_qname", pa.string(), "first question name as sent, no trailing dot"),
    Field("dns_qtype", pa.uint16(), "first question type"),
    Field("dns_rcode", pa.uint8(), "response code"),
    Field("dns_is_response", pa.bool_(), "QR bit"),
    Field("tls_handshake_type", pa.uint8(), "first handshake message type (1 ClientHello, 2 ServerHello)"),
    Field("tls_version", pa.uint16(), "hello version, or the highest supported_versions entry"),
    Field("tls_sni", pa.string(), "ClientHello server_name"),
    Field("http_method", pa.string(), "HTTP/1 request method"),
    Field("http_host", pa.string(), "HTTP/1 Host header"),
    Field("http_uri", pa.string(), "HTTP/1 request target"),
    Field("http_user_agent", pa.string(), "HTTP/1 User-Agent header"),
    Field("http_status", pa.uint16(), "HTTP/1 response status code"),
    Field("http_auth_scheme", pa.string(), "HTTP/1 request Authorization scheme (Basic, Digest, Bearer...), never its value"),
    Field("http_server", pa.string(), "HTTP/1 response Server header"),
    Field("ssh_banner", pa.string(), "SSH identification string (RFC 4253 4.2)"),
    Field("modbus_func", pa.uint8(), "Modbus/TCP function code (bit 7 set = exception response)"),
    Field("smb_version", pa.uint8(), "SMB dialect family of the message: 1 (SMBv1, \\xffSMB), 2 (SMB2/3), 3 (SMB3 transform)"),
    Field("login_command", pa.string(),
          "cleartext login command sent (FTP/POP3 USER, PASS, APOP; IMAP LOGIN, AUTHENTICATE; SMTP AUTH),"
          " never the credential"),
    Field("dnp3_func", pa.uint8(), "DNP3 application function code of a first fragment (2 write, 5 direct operate,"
          " 13 cold restart...; 129/130 responses)"),
    Field("s7_rosctr", pa.uint8(), "S7comm message kind (ROSCTR): 1 job request, 3 ack-data response"),
    Field("s7_func", pa.uint8(), "S7comm parameter function code (4 read, 5 write, 0x1a-0x1c download, 0x28 PI service,"
          " 0x29 PLC stop)"),
    Field("pii_kinds", pa.uint8(), "personal data found in a cleartext payload, bits: 1 resident identity number"
          " (MOD 11-2 valid), 2 mobile number, 4 IMSI/SUPI, 8 bank card (Luhn valid)"),
    Field("pii_masked", pa.string(), "the personal data found, masked (110105********002X, 138****5678), never raw"),
]

def arrow_schema(fields: list[Field], name: str, version: int) -> pa.Schema:
    """An Arrow schema whose fields carry their docs and whose metadata names the table and version."""
    return pa.schema(
        [pa.field(f.name, f.type, metadata={"doc": f.doc}) for f in fields],
        metadata={"liaowang.schema": name, "liaowang.version": str(version)},
    )


PACKET_SCHEMA = arrow_schema(PACKET_FIELDS, "packets", PACKET_SCHEMA_VERSION)
