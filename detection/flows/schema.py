"""The flow table: one row per bidirectional flow, nfstream-style names
(direction and unit in every name).  ``docs/schemas.md`` is generated from here."""

from __future__ import annotations

import pyarrow as pa

from sensors.schema import Field, arrow_schema

FLOW_SCHEMA_VERSION = 2

TS = pa.timestamp("ns", tz="UTC")
TCP_FLAGS = ("syn", "ack", "psh", "rst", "fin", "urg", "ece", "cwr")
#: bit number of each flag in the TCP header's flags byte
TCP_FLAG_BIT = {"fin": 0, "syn": 1, "rst": 2, "psh": 3, "ack": 4, "urg": 5, "ece": 6, "cwr": 7}
SPLT_PACKETS = 8  # first packets described in the splt_* lists


def _stats(prefix: str, what: str, unit: str, doc: str) -> list[Field]:
    return [
        Field(f"{prefix}_min_{what}", pa.float64(), f"minimum {doc}, {unit}"),
        Field(f"{prefix}_mean_{what}", pa.float64(), f"mean {doc}, {unit}"),
        Field(f"{prefix}_stddev_{what}", pa.float64(), f"sample standard deviation of {doc}, {unit}"),
        Field(f"{prefix}_max_{what}", pa.float64(), f"maximum {doc}, {unit}"),
    ]


FLOW_FIELDS: list[Field] = [
    Field("flow_id", pa.int64(), "deterministic id: hash of the flow key and first_seen (< 2**53)"),
    Field("community_id", pa.string(), "Community ID v1 of the (inner) 5-tuple, seed 0"),
    Field("first_seen", TS, "timestamp of the first packet"),
    Field("last_seen", TS, "timestamp of the last packet"),
    Field("src_ip", pa.string(), "source of the first packet (inner address when tunnelled)"),
    Field("dst_ip", pa.string(), "destination of the first packet"),
    Field("src_port", pa.uint16(), "source port (0 for ICMP and port-less protocols)"),
    Field("dst_port", pa.uint16(), "destination port"),
    Field("ip_proto", pa.uint8(), "IP protocol number"),
    Field("teid", pa.uint32(), "GTP-U TEID of src->dst packets, null when not tunnelled in GTP-U"),
    Field("tunnel_src_ip", pa.string(), "outer source address of the first packet"),
    Field("tunnel_dst_ip", pa.string(), "outer destination address of the first packet"),
    Field("bidirectional_packets", pa.uint64(), "packets both ways"),
    Field("bidirectional_bytes", pa.uint64(), "frame bytes (on the wire) both ways"),
    Field("src2dst_packets", pa.uint64(), "packets src->dst"),
    Field("dst2src_packets", pa.uint64(), "packets dst->src"),
    Field("src2dst_bytes", pa.uint64(), "frame bytes src->dst"),
    Field("dst2src_bytes", pa.uint64(), "frame bytes dst->src"),
    Field("ip_version", pa.uint8(), "4 or 6"),
    Field("vlan_id", pa.uint16(), "outer VLAN id, null if untagged"),
    Field("tunnel_type", pa.string(), "gtpu, gre, vxlan, geneve, ipip, erspan; null if not tunnelled"),
    Field("dst2src_teid", pa.uint32(), "GTP-U TEID of dst->src packets (each direction has its own)"),
    Field("gtpu_qfi", pa.uint8(), "QoS flow id of the first packet carrying one"),
    Field("bidirectional_duration_ms", pa.float64(), "last_seen - first_seen, ms"),
    Field("src2dst_payload_bytes", pa.uint64(), "transport payload bytes src->dst"),
    Field("dst2src_payload_bytes", pa.uint64(), "transport payload bytes dst->src"),
    *_stats("bidirectional", "ps", "bytes", "frame size both ways"),
    *_stats("src2dst", "ps", "bytes", "frame size src->dst"),
    *_stats("dst2src", "ps", "bytes", "frame size dst->src"),
    *_stats("bidirectional", "piat_ms", "ms", "packet inter-arrival time both ways"),
    *_stats("src2dst", "piat_ms", "ms", "inter-arrival time of src->dst packets"),
    *_stats("dst2src", "piat_ms", "ms", "inter-arrival time of dst->src packets"),
    *[Field(f"bidirectional_{f}_packets", pa.uint64(), f"packets with TCP {f.upper()} set") for f in TCP_FLAGS],
    *[Field(f"src2dst_{f}_packets", pa.uint64(), f"src->dst packets with TCP {f.upper()}") for f in ("syn", "fin", "rst")],
    *[Field(f"dst2src_{f}_packets", pa.uint64(), f"dst->src packets with TCP {f.upper()}") for f in ("syn", "fin", "rst")],
    Field("splt_payload_bytes", pa.list_(pa.int32()), f"payload bytes of the first {SPLT_PACKETS} packets"),
    Field("splt_direction", pa.list_(pa.int8()), "direction of those packets: 0 src->dst, 1 dst->src"),
    Field("application_hint", pa.string(), "first application protocol recognised (dns, tls, http, pfcp...)"),
    Field("server_name", pa.string(), "first TLS SNI, HTTP Host or DNS query name seen"),
    Field("decode_error_packets", pa.uint64(), "packets whose decode_status is not 0"),
    Field("expiration_reason", pa.string(), "idle, active, tcp_reuse (new SYN after FIN/RST), end_of_input or evicted (the "
                                             "flow table was full: least recently seen first)"),
    Field("session_id", pa.string(), "the 5G/4G session (sessions table) of a GTP-U flow or of a UE's N6 flow,"
          " null when none is known"),
    Field("plane", pa.string(), "5G interface: N2, N3, N4, SBI, N6 (a UE's untunnelled flow), S1/S11/S5, Diameter or other"),
]

FLOW_SCHEMA = arrow_schema(FLOW_FIELDS, "flows", FLOW_SCHEMA_VERSION)
