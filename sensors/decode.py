"""Frames -> packet batch: the layer loop over the protocol modules.

    link -> IPv4/IPv6 -> TCP/UDP/ICMP/SCTP -> tunnel? (GTP-U, GRE, VXLAN,
    Geneve, IP-in-IP: record the outer layer in the tunnel columns and go round
    again with the inner packet) -> control-plane and application hints.

Every step works on arrays of packet indices; nothing runs per packet.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow as pa

from sensors.capture.frames import FrameBatch
from sensors.protocols import (
    diameter,
    dnp3,
    dns,
    geneve,
    gre,
    gtpc,
    gtpu,
    http,
    http2,
    icmp,
    ipv4,
    ipv6,
    link,
    login,
    modbus,
    pfcp,
    pii,
    s7comm,
    sctp,
    smb,
    ssh,
    tcp,
    tls,
    udp,
    vxlan,
)
from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto, DecodeStatus, TunnelType

MAX_TUNNEL_DEPTH = 3
PROTO_ICMP, PROTO_IPIP, PROTO_TCP, PROTO_UDP, PROTO_IPV6, PROTO_GRE, PROTO_ICMPV6, PROTO_SCTP = 1, 4, 6, 17, 41, 47, 58, 132
ETH_IPV4, ETH_IPV6, ETH_TEB = 0x0800, 0x86DD, 0x6558
#: application protocols whose payload the message dissectors read (low volume: signalling)
CONTROL_PLANE = (AppProto.PFCP, AppProto.GTPC, AppProto.NGAP, AppProto.S1AP, AppProto.DIAMETER, AppProto.HTTP2)

#: columns that describe one layer: cleared when a tunnel is removed, so the
#: inner packet's values never mix with the outer one's
LAYER_COLUMNS = (
    "ip_version", "src_ip", "dst_ip", "ip_proto", "ip_ttl", "ip_hdr_len", "ip_len", "ip_id",
    "ip_is_fragment", "ip_frag_offset", "src_port", "dst_port", "tcp_flags", "tcp_seq", "tcp_ack",
    "tcp_window", "tcp_hdr_len", "icmp_type", "icmp_code", "sctp_chunk_types", "sctp_ppid",
    "payload_len", "app_proto",
)


def decode(frames: FrameBatch, columns: Collection[str] | None = None) -> pa.RecordBatch:
    """Decode one chunk of frames into a packet batch (``sensors.schema.PACKET_SCHEMA``).

    ``columns``: the columns its reader needs (None: all); the others stay null, and the work that only
    they need is skipped (e.g. a flow meter's: no sensitive-data scan, TLS fingerprints or signalling
    payloads).  Building the Arrow columns is ~15% of decoding, and a flow meter reads about a third of them.
    """
    pk = Packets(frames, columns)
    rows, off, etype = link.dissect_frames(pk)
    depth = np.zeros(pk.n, dtype=np.uint8)
    for level in range(MAX_TUNNEL_DEPTH + 1):
        l4rows, l4off, ip_end, proto = _network(pk, rows, off, etype)
        _transport(pk, l4rows, l4off, ip_end, proto)
        found = _find_tunnels(pk, l4rows, proto)
        if level == MAX_TUNNEL_DEPTH:  # the tunnel headers are decoded, their payloads are not
            for _kind, (inner_rows, _, _) in found:
                pk.fail(inner_rows, DecodeStatus.TOO_MANY_LAYERS)
            break
        rows, off, etype = _decapsulate(pk, found, depth)
        if not len(rows):
            break
    if depth.any():
        pk.put("tunnel_depth", np.flatnonzero(depth), depth[depth > 0])
    _applications(pk)
    return pk.to_arrow()


def _network(pk: Packets, rows: np.ndarray, off: np.ndarray, etype: np.ndarray) -> ipv4.L4:
    parts = []
    for code, fn in ((ETH_IPV4, ipv4.dissect), (ETH_IPV6, ipv6.dissect)):
        m = etype == code
        if m.any():
            parts.append(fn(pk, rows[m], off[m]))
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return e, e, e, e
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def _transport(pk: Packets, rows: np.ndarray, off: np.ndarray, ip_end: np.ndarray, proto: np.ndarray) -> None:
    for codes, fn in (
        ((PROTO_TCP,), tcp.dissect),
        ((PROTO_UDP,), udp.dissect),
        ((PROTO_ICMP, PROTO_ICMPV6), icmp.dissect),
        ((PROTO_SCTP,), sctp.dissect),
    ):
        m = one_of(proto, codes)
        if m.any():
            fn(pk, rows[m], off[m], ip_end[m])
    # protocols carried directly in IP (GRE, IP-in-IP) start right after the IP header
    other = ~one_of(proto, (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP))
    pk.pl_off[rows[other]] = off[other]
    pk.pl_end[rows[other]] = np.minimum(ip_end[other], pk.end[rows[other]])


Tunnels = list[tuple[TunnelType, link.Layer]]


def _find_tunnels(pk: Packets, rows: np.ndarray, proto: np.ndarray) -> Tunnels:
    """Decode the tunnel headers among ``rows``: per kind, the inner packets' (rows, l3_off, ethertype)."""
    udp_rows = rows[(proto == PROTO_UDP) & (pk.pl_off[rows] >= 0)]
    found: Tunnels = []
    gtp_rows = gtpu.candidates(pk, udp_rows)
    if len(gtp_rows):
        # a G-PDU whose payload is again GTP-U is an injection attempt: flag it, don't unwrap twice
        again = pk.has("tunnel_type", gtp_rows) & (pk.get("tunnel_type", gtp_rows) == TunnelType.GTPU)
        if again.any():
            nested = gtp_rows[again]
            nested = nested[gtpu.looks_like(pk, nested)]
            pk.put("gtp_in_gtp", nested, True)
            pk.put("app_proto", nested, AppProto.GTPU)
            gtp_rows = gtp_rows[~again]
        found.append((TunnelType.GTPU, gtpu.dissect(pk, gtp_rows)))
    for mod, kind in ((vxlan, TunnelType.VXLAN), (geneve, TunnelType.GENEVE)):
        cand = mod.candidates(pk, udp_rows)
        if len(cand):
            found.append((kind, mod.dissect(pk, cand)))
    gre_rows = rows[proto == PROTO_GRE]
    if len(gre_rows):
        erspan = gre.is_erspan(pk, gre_rows)
        inner = gre.dissect(pk, gre_rows)
        kinds = np.where(np.isin(inner[0], gre_rows[erspan]), TunnelType.ERSPAN, TunnelType.GRE)
        for kind in (TunnelType.GRE, TunnelType.ERSPAN):
            m = kinds == kind
            if m.any():
                found.append((kind, (inner[0][m], inner[1][m], inner[2][m])))
    ipip = one_of(proto, (PROTO_IPIP, PROTO_IPV6))
    if ipip.any():
        r = rows[ipip]
        et = np.where(proto[ipip] == PROTO_IPIP, ETH_IPV4, ETH_IPV6)
        found.append((TunnelType.IPIP, (r, pk.pl_off[r], et)))
    return found


def _decapsulate(pk: Packets, found: Tunnels, depth: np.ndarray) -> link.Layer:
    """Move the outer addresses to the tunnel columns and start the inner packets' next round."""
    parts: list[link.Layer] = []
    for kind, (r, o, et) in found:
        if not len(r):
            continue
        pk.put("tunnel_type", r, kind)
        pk.put_ip("tunnel_src_ip", r, pk.get("src_ip", r)[:, 0], pk.get("src_ip", r)[:, 1])
        pk.put_ip("tunnel_dst_ip", r, pk.get("dst_ip", r)[:, 0], pk.get("dst_ip", r)[:, 1])
        depth[r] += 1
        pk.clear(LAYER_COLUMNS, r)
        pk.pl_off[r] = -1
        pk.more_off[r] = -1
        pk.pl_end[r] = -1
        eth = et == ETH_TEB
        if eth.any():
            parts.append(link.ethernet(pk, r[eth], o[eth]))
        if (~eth).any():
            parts.append((r[~eth], o[~eth], et[~eth]))
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return e, e, e
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _applications(pk: Packets) -> None:
    """Control-plane headers and application hints on the innermost transport payload."""
    if "ip_proto" not in pk.values:
        return
    has_payload = pk.valid["ip_proto"] & (pk.pl_off >= 0) & (pk.pl_end > pk.pl_off)
    proto = pk.values["ip_proto"]
    udp_rows = np.flatnonzero(has_payload & (proto == PROTO_UDP))
    tcp_rows = np.flatnonzero(has_payload & (proto == PROTO_TCP))
    sctp_rows = np.flatnonzero(has_payload & (proto == PROTO_SCTP))
    if len(udp_rows):
        unclassified = udp_rows[~pk.has("app_proto", udp_rows)]
        pfcp.dissect(pk, unclassified)
        gtpc.dissect(pk, unclassified)
        dns.dissect(pk, unclassified)
        dnp3.dissect(pk, udp_rows[~pk.has("app_proto", udp_rows)])
    if len(tcp_rows):
        dns.dissect(pk, tcp_rows)
        # the first payload byte, read once, picks the candidates of each text/TLS dissector
        first = pk.u8(pk.pl_off[tcp_rows])
        tls.dissect(pk, tcp_rows[first == tls.HANDSHAKE])
        http.dissect(pk, tcp_rows[http.FIRST_BYTES[first]])
        ssh.dissect(pk, tcp_rows[first == ord("S")])
        modbus.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
        smb.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
        login.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
        dnp3.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
        s7comm.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
        if pk.wants("pii_kinds") or pk.wants("pii_masked"):
            pii.dissect(pk, tcp_rows)
    diameter.dissect(pk, np.concatenate([tcp_rows[~pk.has("app_proto", tcp_rows)], sctp_rows]))
    if len(tcp_rows):
        http2.dissect(pk, tcp_rows[~pk.has("app_proto", tcp_rows)])
    if not (pk.wants("cp_payload") or pk.wants("cp_more")):
        return
    cp = np.flatnonzero(has_payload & pk.valid.get("app_proto", np.zeros(pk.n, dtype=bool)))
    cp = cp[one_of(pk.values["app_proto"][cp], CONTROL_PLANE)] if len(cp) else cp
    if len(cp):
        end = np.minimum(pk.pl_end[cp], pk.end[cp])
        pk.put_bytes("cp_payload", cp, pk.pl_off[cp], end - pk.pl_off[cp])
        more = cp[pk.more_off[cp] >= 0]  # SCTP packets that bundle further DATA chunks
        if len(more):
            pk.put_bytes("cp_more", more, pk.more_off[more], np.maximum(pk.more_end[more] - pk.more_off[more], 0))
