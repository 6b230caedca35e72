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
#: the longest text a decoder stores (names, URIs, user agents, banners...): hostile input may send
#: 64 KB headers, and every copy downstream (flows, alerts, stores, the console) would pay for them
MAX_TEXT_CHARS = 1024


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
    Field("tls_ja3", pa.string(), "ClientHello JA3 fingerprint (MD5 hex), when the hello fits in the packet"),
    Field("tls_ja4", pa.string(), "ClientHello JA4 fingerprint (t13d1516h2_..._...), when the hello fits in the packet"),
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
    Field("cp_payload", pa.binary(), "the application payload of control-plane messages (PFCP, GTP-C, NGAP, S1AP,"
          " Diameter, cleartext HTTP/2), captured bytes, for the message dissectors; null for other packets"),
    Field("cp_more", pa.binary(), "SCTP control-plane packets that bundle several DATA chunks: the chunks from the"
          " second DATA chunk on, headers included (the dissectors read every message); null for other packets"),
]

def arrow_schema(fields: list[Field], name: str, version: int) -> pa.Schema:
    """An Arrow schema whose fields carry their docs and whose metadata names the table and version."""
    return pa.schema(
        [pa.field(f.name, f.type, metadata={"doc": f.doc}) for f in fields],
        metadata={"liaowang.schema": name, "liaowang.version": str(version)},
    )


_EMPTY: dict[int, tuple[pa.Schema, pa.Table]] = {}


def empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()``, made once per schema object: tables are immutable, and making one with
    timestamp columns costs ~0.6 ms (pyarrow reads an environment variable per column), several times per
    batch in the stages.  Keyed by identity (hashing a 72-column schema costs ~70 us); the entry keeps its
    schema alive, so its id cannot be reused."""
    hit = _EMPTY.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    table = schema.empty_table()
    if len(_EMPTY) < 256:
        _EMPTY[id(schema)] = (schema, table)
    return table


PACKET_SCHEMA = arrow_schema(PACKET_FIELDS, "packets", PACKET_SCHEMA_VERSION)


# -- control-plane message tables (``proto.*``) --
#
# One row per control-plane message, from the message dissectors of
# ``sensors.protocols``.  Control-plane volumes are small next to the user
# plane, so these dissectors may work per message.  Every table starts with
# the common fields and is joined to flows by ``flow_id``.  Subscriber
# identities (IMSI/SUPI, MSISDN/GPSI, IMEI, Diameter User-Name) are stored as
# keyed-hash pseudonyms, never raw.

PROTO_SCHEMA_VERSION = 1

PROTO_COMMON: list[Field] = [
    Field("ts", pa.timestamp("ns", tz="UTC"), "capture timestamp of the packet carrying the message"),
    Field("flow_id", pa.int64(), "the flow the packet belongs to (flows table)"),
    Field("src_ip", pa.string(), "sender address"),
    Field("dst_ip", pa.string(), "receiver address"),
    Field("src_port", pa.uint16(), "sender port"),
    Field("dst_port", pa.uint16(), "receiver port"),
    Field("error", pa.string(), "why dissection stopped early (truncated IE...), null when the message decoded whole"),
]

TEID_IP = pa.struct([("teid", pa.uint32()), ("ip", pa.string())])

PFCP_FIELDS: list[Field] = PROTO_COMMON + [
    Field("msg_type", pa.uint8(), "PFCP message type (TS 29.244 7.3)"),
    Field("msg_name", pa.string(), "message name (session_establishment_request...)"),
    Field("is_request", pa.bool_(), "a request (odd types below 50, even types from 50 are responses)"),
    Field("seid", pa.uint64(), "header SEID: the receiver's session endpoint id; null for node messages"),
    Field("seq", pa.uint32(), "sequence number"),
    Field("node_id", pa.string(), "Node ID IE: IPv4/IPv6 address or FQDN of the sender"),
    Field("cause", pa.uint8(), "Cause IE (1 accepted, 64 rejected, 65 session context not found...)"),
    Field("recovery_ts", pa.timestamp("s", tz="UTC"), "Recovery Time Stamp IE: when the sender's node last started"),
    Field("fseid_seid", pa.uint64(), "F-SEID IE: the sender's own SEID for this session"),
    Field("fseid_ip", pa.string(), "F-SEID IE: the sender's address"),
    Field("fteids", pa.list_(pa.struct([("teid", pa.uint32()), ("ip", pa.string()), ("pdr_id", pa.uint16()),
                                        ("source_interface", pa.uint8()), ("choose", pa.bool_())])),
          "F-TEIDs of PDIs and Created PDRs: the UPF's tunnel endpoints (source_interface 0 access/N3, 1 core/N9);"
          " choose = the UPF is asked to allocate one"),
    Field("ue_ips", pa.list_(pa.string()), "UE IP Address IEs"),
    Field("outer_headers", pa.list_(pa.struct([("teid", pa.uint32()), ("ip", pa.string()),
                                               ("far_id", pa.uint32()), ("destination_interface", pa.uint8())])),
          "Outer Header Creation of FARs: the peer tunnel endpoints the UPF sends to (destination_interface"
          " 0 access: the gNB/eNB on N3/S1-U, 1 core: the next UPF/PGW on N9/S5-U)"),
    Field("pdr_ids", pa.list_(pa.uint16()), "PDR IDs"),
    Field("far_ids", pa.list_(pa.uint32()), "FAR IDs"),
    Field("qer_ids", pa.list_(pa.uint32()), "QER IDs"),
    Field("urr_ids", pa.list_(pa.uint32()), "URR IDs"),
    Field("network_instances", pa.list_(pa.string()), "Network Instance IEs (DNN / APN / VRF names)"),
    Field("apply_actions", pa.list_(pa.uint16()), "Apply Action flags of FARs (1 drop, 2 forward, 4 buffer...)"),
    Field("supi", pa.string(), "User ID IE: the IMSI, NAI or SUPI, pseudonymised"),
    Field("gpsi", pa.string(), "User ID IE: the MSISDN or GPSI, pseudonymised"),
    Field("pei", pa.string(), "User ID IE: the IMEI or PEI, pseudonymised"),
    Field("unknown_ies", pa.list_(pa.struct([("type", pa.uint16()), ("value", pa.binary())])),
          "IEs not interpreted, as type and raw value"),
]

GTPC_FIELDS: list[Field] = PROTO_COMMON + [
    Field("version", pa.uint8(), "GTP-C version; IEs are decoded for version 2 (TS 29.274), headers only for 1"),
    Field("msg_type", pa.uint8(), "message type"),
    Field("msg_name", pa.string(), "message name (create_session_request...)"),
    Field("is_request", pa.bool_(), "a request or notification (not a response)"),
    Field("teid", pa.uint32(), "header TEID: the receiver's control TEID, null when absent"),
    Field("seq", pa.uint32(), "sequence number"),
    Field("imsi", pa.string(), "IMSI IE, pseudonymised"),
    Field("msisdn", pa.string(), "MSISDN IE, pseudonymised"),
    Field("mei", pa.string(), "MEI (IMEI/IMEISV) IE, pseudonymised"),
    Field("apn", pa.string(), "APN IE"),
    Field("ue_ip", pa.string(), "PDN Address Allocation IE: the UE's address"),
    Field("cause", pa.uint8(), "Cause IE (16 request accepted...)"),
    Field("fteids", pa.list_(pa.struct([("interface_type", pa.uint8()), ("teid", pa.uint32()), ("ip", pa.string()),
                                        ("ebi", pa.uint8())])),
          "F-TEID IEs, in the message and in its Bearer Contexts (ebi set): interface type 0 S1-U eNodeB,"
          " 1 S1-U SGW, 4 S5/S8 SGW GTP-U, 5 S5/S8 PGW GTP-U, 6 S5/S8 SGW GTP-C, 7 S5/S8 PGW GTP-C, 10 S11 MME,"
          " 11 S11/S4 SGW GTP-C"),
    Field("ebis", pa.list_(pa.uint8()), "EPS Bearer IDs"),
    Field("unknown_ies", pa.list_(pa.struct([("type", pa.uint16()), ("value", pa.binary())])),
          "IEs not interpreted, as type and raw value"),
]

NGAP_FIELDS: list[Field] = PROTO_COMMON + [
    Field("pdu_type", pa.uint8(), "NGAP PDU: 0 initiating message, 1 successful outcome, 2 unsuccessful outcome"),
    Field("procedure_code", pa.uint8(), "NGAP procedure code (TS 38.413 9.4.7)"),
    Field("procedure_name", pa.string(), "procedure name (initial_ue_message...)"),
    Field("ran_ue_ngap_id", pa.uint64(), "RAN UE NGAP ID"),
    Field("amf_ue_ngap_id", pa.uint64(), "AMF UE NGAP ID"),
    Field("nas_mm_types", pa.list_(pa.uint8()), "5GMM message types of plain NAS (0x41 registration request...)"),
    Field("nas_sm_types", pa.list_(pa.uint8()), "5GSM message types of plain NAS (0xc1 PDU session establishment"
          " request...)"),
    Field("nas_ciphered", pa.bool_(), "a NAS PDU is ciphered (security header 2 or 4): its content is not visible"),
    Field("supi", pa.string(), "SUPI from a null-scheme SUCI (imsi-MCCMNCMSIN), pseudonymised"),
    Field("suci_scheme", pa.uint8(), "SUCI protection scheme (0 null, 1 profile A, 2 profile B)"),
    Field("tmsi_5g", pa.string(), "5G-TMSI (hex) from a 5G-GUTI / 5G-S-TMSI"),
    Field("pdu_session_ids", pa.list_(pa.uint8()), "PDU session ids"),
    Field("ue_ip", pa.string(), "UE IPv4 address from a plain PDU Session Establishment Accept"),
    Field("dnn", pa.string(), "DNN"),
    Field("snssais", pa.list_(pa.string()), "S-NSSAIs as SST or SST-SD (hex)"),
    Field("gtp_tunnels", pa.list_(TEID_IP), "N3 GTP tunnels: in a PDU Session Resource Setup request the UPF's"
          " (uplink) endpoint, in its response the gNB's (downlink) endpoint"),
    Field("mm_cause", pa.uint8(), "5GMM cause"),
    Field("ran_node_name", pa.string(), "RAN node name (NG Setup)"),
    Field("amf_name", pa.string(), "AMF name (NG Setup response)"),
    Field("malformed", pa.bool_(), "the dissector found the NGAP or NAS encoding malformed"),
]

SBI_FIELDS: list[Field] = PROTO_COMMON + [
    Field("stream_id", pa.uint32(), "HTTP/2 stream id"),
    Field("is_request", pa.bool_(), "request headers (else response headers)"),
    Field("method", pa.string(), ":method"),
    Field("path", pa.string(), ":path, with SUPI/GPSI values replaced by their pseudonyms"),
    Field("authority", pa.string(), ":authority"),
    Field("user_agent", pa.string(), "user-agent (TS 29.500 5.2.2.2: the client's NF type first)"),
    Field("status", pa.uint16(), ":status of a response"),
    Field("content_type", pa.string(), "content-type"),
    Field("service", pa.string(), "the NF service of the path (nudm-sdm, nsmf-pdusession...)"),
    Field("nf_type", pa.string(), "the NF type serving that service (UDM, SMF...)"),
    Field("client_nf_type", pa.string(), "the client's NF type from user-agent, when it names one"),
    Field("supi", pa.string(), "SUPI or GPSI found in the path, pseudonymised"),
    Field("headers_incomplete", pa.bool_(), "some header fields referred to HPACK dynamic-table entries from before"
          " the capture (mid-stream connection): their names or values are unknown"),
]

DIAMETER_FIELDS: list[Field] = PROTO_COMMON + [
    Field("cmd_code", pa.uint32(), "command code (RFC 6733 3)"),
    Field("cmd_name", pa.string(), "command name (ULR/ULA, CCR/CCA...)"),
    Field("app_id", pa.uint32(), "application id (16777251 S6a, 16777238 Gx, 16777216 Cx...)"),
    Field("app_name", pa.string(), "application name"),
    Field("is_request", pa.bool_(), "R flag"),
    Field("hop_by_hop", pa.uint32(), "hop-by-hop identifier"),
    Field("end_to_end", pa.uint32(), "end-to-end identifier"),
    Field("session_id", pa.string(), "Session-Id AVP, subscriber identities in it pseudonymised"),
    Field("origin_host", pa.string(), "Origin-Host AVP"),
    Field("origin_realm", pa.string(), "Origin-Realm AVP"),
    Field("destination_host", pa.string(), "Destination-Host AVP"),
    Field("destination_realm", pa.string(), "Destination-Realm AVP"),
    Field("user_name", pa.string(), "User-Name AVP (the IMSI on S6a), pseudonymised"),
    Field("result_code", pa.uint32(), "Result-Code, or Experimental-Result-Code"),
]

#: every proto table: name -> fields
PROTO_FIELDS: dict[str, list[Field]] = {
    "pfcp": PFCP_FIELDS, "gtpc": GTPC_FIELDS, "ngap": NGAP_FIELDS, "sbi": SBI_FIELDS, "diameter": DIAMETER_FIELDS,
}
PROTO_SCHEMAS: dict[str, pa.Schema] = {
    name: arrow_schema(fields, f"proto.{name}", PROTO_SCHEMA_VERSION) for name, fields in PROTO_FIELDS.items()
}
