"""5G control-plane attacks as small captures: PFCP session tampering, user-plane traffic without (or
against) its control plane, NAS registration/deregistration floods, malformed NGAP, and SBI misuse.

The shared corpus has none of these.  PFCP (TS 29.244) and HTTP/2 (RFC 9113,
HPACK by the ``hpack`` library) are built here byte by byte; NGAP is ASN.1 PER,
so the NGAP messages are a real InitialUEMessage (from the Apache-2.0
5Greplay ``ue_authetication.pcapng``, bundled in ``pcaps/shared``) with its
RAN UE NGAP ID and NAS message type patched in place.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hpack import Encoder
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData

from sensors.generate.attacks import _eth, write_pcap

#: NGAP InitialUEMessage with a NAS Registration Request (null-scheme SUCI), 5Greplay ue_authetication frame 3
INITIAL_UE_MESSAGE = bytes.fromhex(
    "000f405500000500550002000100260027267e004179000d0109f1070000000000000000301001002e04f0f0f0f02f0504010000"
    "01530100007940135009f107000000010009f107000001e43a415e005a4001200070400100")
RAN_UE_ID_AT = INITIAL_UE_MESSAGE.index(bytes.fromhex("0055000200")) + 5
NAS_TYPE_AT = INITIAL_UE_MESSAGE.index(bytes.fromhex("7e0041")) + 2
SMF, UPF_N4, UPF_N3, GNB, ATTACKER = "10.60.0.1", "10.60.0.2", "10.60.1.2", "10.60.3.1", "198.51.100.66"


def _ie(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value


def _ip4(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def _pfcp(mtype: int, seq: int, ies: bytes, seid: int | None = None) -> bytes:
    body = (struct.pack("!Q", seid) if seid is not None else b"") + struct.pack("!I", seq << 8) + ies
    return struct.pack("!BBH", 0x21 if seid is not None else 0x20, mtype, len(body)) + body


def _udp(src: str, dst: str, payload: bytes, sport: int, dport: int) -> bytes:
    return _eth(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def _n4(src: str, dst: str, payload: bytes) -> bytes:
    return _udp(src, dst, payload, 8805, 8805)


def _gpdu(src: str, dst: str, teid: int, inner_src: str) -> bytes:
    return _eth(IP(src=src, dst=dst) / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=teid, gtp_type=255)
                / IP(src=inner_src, dst="8.8.8.8") / UDP(sport=40000, dport=53) / b"query")


def pfcp_session_tampering() -> list[tuple[float, bytes]]:
    """An SMF sets up a session at a UPF; then a foreign node deletes it, a SEID is guessed, a TEID no
    session holds is used, and the session's TEID carries another UE's address."""
    node = _ie(60, b"\x00" + _ip4(SMF))
    up_node = _ie(60, b"\x00" + _ip4(UPF_N4))
    recovery = _ie(96, struct.pack("!I", 3_900_000_000))
    pdi = _ie(20, b"\x00") + _ie(21, b"\x05") + _ie(93, b"\x02" + _ip4("10.45.0.5"))  # F-TEID: CHOOSE, v4
    est = (node + _ie(57, b"\x02" + struct.pack("!Q", 0x11) + _ip4(SMF))
           + _ie(1, _ie(56, b"\x00\x01") + _ie(29, b"\x00\x00\x00\xff") + _ie(2, pdi) + _ie(108, b"\x00\x00\x00\x01"))
           + _ie(3, _ie(108, b"\x00\x00\x00\x01") + _ie(44, b"\x02\x00")))
    created = (_ie(19, b"\x01") + up_node + _ie(57, b"\x02" + struct.pack("!Q", 0x9001) + _ip4(UPF_N4))
               + _ie(8, _ie(56, b"\x00\x01") + _ie(21, b"\x01" + struct.pack("!I", 0x100) + _ip4(UPF_N3))))
    return [
        (0.0, _n4(SMF, UPF_N4, _pfcp(5, 1, node + recovery))),
        (0.01, _n4(UPF_N4, SMF, _pfcp(6, 1, up_node + _ie(19, b"\x01") + recovery))),
        (1.0, _n4(SMF, UPF_N4, _pfcp(50, 2, est, seid=0))),
        (1.01, _n4(UPF_N4, SMF, _pfcp(51, 2, created, seid=0x11))),
        (2.0, _gpdu(GNB, UPF_N3, 0x100, "10.45.0.5")),
        (3.0, _n4(ATTACKER, UPF_N4, _pfcp(54, 77, b"", seid=0x9001))),  # deletes a session it did not create
        (4.0, _n4(ATTACKER, UPF_N4, _pfcp(54, 78, b"", seid=0x9999))),  # guesses a SEID
        (5.0, _gpdu(ATTACKER, UPF_N3, 0x777, "10.45.0.9")),  # a TEID no session holds
        (6.0, _gpdu(GNB, UPF_N3, 0x100, "10.45.0.99")),  # the session's TEID, another UE's address
    ]


def _session(t: float, seq: int, cp_seid: int, up_seid: int, ue: str, teid: int, gpdus: int
             ) -> list[tuple[float, bytes]]:
    """One PFCP session from the SMF: established at ``t``, ``gpdus`` G-PDUs a second apart, deleted."""
    node = _ie(60, b"\x00" + _ip4(SMF))
    pdi = _ie(20, b"\x00") + _ie(21, b"\x05") + _ie(93, b"\x02" + _ip4(ue))
    est = (node + _ie(57, b"\x02" + struct.pack("!Q", cp_seid) + _ip4(SMF))
           + _ie(1, _ie(56, b"\x00\x01") + _ie(29, b"\x00\x00\x00\xff") + _ie(2, pdi) + _ie(108, b"\x00\x00\x00\x01"))
           + _ie(3, _ie(108, b"\x00\x00\x00\x01") + _ie(44, b"\x02\x00")))
    created = (_ie(19, b"\x01") + _ie(60, b"\x00" + _ip4(UPF_N4))
               + _ie(57, b"\x02" + struct.pack("!Q", up_seid) + _ip4(UPF_N4))
               + _ie(8, _ie(56, b"\x00\x01") + _ie(21, b"\x01" + struct.pack("!I", teid) + _ip4(UPF_N3))))
    frames = [(t, _n4(SMF, UPF_N4, _pfcp(50, seq, est, seid=0))),
              (t + 0.01, _n4(UPF_N4, SMF, _pfcp(51, seq, created, seid=cp_seid)))]
    frames += [(t + 1.0 + i, _gpdu(GNB, UPF_N3, teid, ue)) for i in range(gpdus)]
    end = t + 2.0 + gpdus
    return frames + [(end, _n4(SMF, UPF_N4, _pfcp(54, seq + 1, b"", seid=up_seid))),
                     (end + 0.01, _n4(UPF_N4, SMF, _pfcp(55, seq + 1, _ie(19, b"\x01"), seid=cp_seid)))]


def pfcp_sessions_with_and_without_user_plane(silent: bool = True) -> list[tuple[float, bytes]]:
    """Two sessions at one UPF, each set up and deleted: the first carries G-PDUs; the second none
    (``silent``) or some (the benign twin)."""
    node = _ie(60, b"\x00" + _ip4(SMF))
    recovery = _ie(96, struct.pack("!I", 3_900_000_000))
    association = [(0.0, _n4(SMF, UPF_N4, _pfcp(5, 1, node + recovery))),
                   (0.01, _n4(UPF_N4, SMF, _pfcp(6, 1, _ie(60, b"\x00" + _ip4(UPF_N4)) + _ie(19, b"\x01")
                                                 + recovery)))]
    return (association + _session(1.0, 2, 0x11, 0x9001, "10.45.0.5", 0x100, gpdus=3)
            + _session(10.0, 4, 0x12, 0x9002, "10.45.0.6", 0x101, gpdus=0 if silent else 3))


def pfcp_establishment_flood(n: int = 3000, seed: int = 5) -> list[tuple[float, bytes]]:
    """The SMF's session set up and used (as in :func:`pfcp_session_tampering`); then ``n`` Session
    Establishment Requests from a rogue node with random F-SEIDs, none answered; then the real session's
    TEID is used again."""
    import random

    rng = random.Random(seed)
    legit = pfcp_session_tampering()[:5]
    flood = []
    node = _ie(60, b"\x00" + _ip4(ATTACKER))
    template = _pfcp(50, 0, node + _ie(57, b"\x02" + struct.pack("!Q", 0) + _ip4(ATTACKER)), seid=0)
    head = _n4(ATTACKER, UPF_N4, template)
    seid_at = len(head) - 12  # the F-SEID's SEID: the last IE's value after its flags byte, before the IPv4
    seq_at = len(head) - len(template) + 12  # the header's sequence number (3 bytes)
    for i in range(n):
        frame = bytearray(head)
        frame[seid_at:seid_at + 8] = struct.pack("!Q", rng.getrandbits(63) | 1)
        frame[seq_at:seq_at + 3] = (i + 1).to_bytes(3, "big")
        flood.append((2.0 + 3.0 * i / n, bytes(frame)))
    return legit + flood + [(6.0, _gpdu(GNB, UPF_N3, 0x100, "10.45.0.5"))]


def _ngap(payload: bytes, ran_ue_id: int, nas_type: int | None = None) -> bytes:
    data = bytearray(payload)
    data[RAN_UE_ID_AT] = ran_ue_id % 256  # PER: a 2-bit length class (1 byte), then the value byte
    if nas_type is not None:
        data[NAS_TYPE_AT] = nas_type
    return bytes(data)


def _n2(payload: bytes, tsn: int, gnb: str = "10.70.0.10") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=gnb, dst="10.70.0.1")
                 / SCTP(sport=9487, dport=38412, tag=1)
                 / SCTPChunkData(tsn=tsn, stream_id=1, proto_id=60, beginning=1, ending=1, data=payload))


def registration_flood(nas_type: int = 0x41, n: int = 300, seconds: float = 5.0) -> list[tuple[float, bytes]]:
    """``n`` InitialUEMessages with a Registration (0x41) or Deregistration (0x45) Request from one gNB."""
    return [(i * seconds / n, _n2(_ngap(INITIAL_UE_MESSAGE, i + 1, nas_type), i + 1)) for i in range(n)]


def malformed_ngap() -> list[tuple[float, bytes]]:
    """InitialUEMessages cut short inside their NAS PDU: a fuzzer's output, not a valid PER encoding."""
    return [(i * 0.5, _n2(_ngap(INITIAL_UE_MESSAGE, 500 + i)[:30 + 3 * i], 10 + i)) for i in range(3)]


def _h2_request(enc: Encoder, stream: int, path: str, authority: str, agent: str) -> bytes:
    block = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", authority),
                        ("user-agent", agent), ("accept", "application/json")])
    return struct.pack("!I", len(block))[1:] + bytes([1, 0x05]) + struct.pack("!I", stream) + block


def _sbi(requests: list[tuple[float, str, str, int, str]], agent: str) -> list[tuple[float, bytes]]:
    """(time, client, server, server port, path) requests, one HTTP/2 connection per client and server."""
    encoders: dict[tuple[str, str], Encoder] = {}
    streams: dict[tuple[str, str], int] = {}
    frames = []
    for t, client, server, port, path in requests:
        key = (client, server)
        enc = encoders.setdefault(key, Encoder())
        stream = streams[key] = streams.get(key, -1) + 2
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000") if stream == 1 else b""
        payload = preface + _h2_request(enc, stream, path, f"{server}:{port}", agent)
        frames.append((t, _eth(IP(src=client, dst=server) / TCP(sport=41000, dport=port, flags="PA") / payload)))
    return frames


def sbi_enumeration(n: int = 60) -> list[tuple[float, bytes]]:
    """One client asks the UDM for the access and mobility data of ``n`` subscribers in half a minute."""
    return _sbi([(i * 0.5, "10.80.0.5", "10.80.0.2", 29503, f"/nudm-sdm/v2/imsi-0010100000{i:05d}/am-data")
                 for i in range(n)], "AMF")


def sbi_new_peer() -> list[tuple[float, bytes]]:
    """An AMF polls the UDM for an hour (its warm-up), then calls the UDR directly, which it never did."""
    return _sbi([(i * 300.0, "10.80.0.6", "10.80.0.2", 29503, "/nudm-sdm/v2/imsi-001010000000001/am-data")
                 for i in range(13)]
                + [(3700.0, "10.80.0.6", "10.80.0.3", 29504, "/nudr-dr/v2/subscription-data/imsi-001010000000001/"
                    "authentication-data/authentication-subscription")], "AMF")


def control_plane_attacks(tmp: Path, t0: float = 1_700_000_000.0) -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    made = {
        "pfcp_session_tampering": pfcp_session_tampering(),
        "pfcp_session_without_user_plane": pfcp_sessions_with_and_without_user_plane(silent=True),
        "pfcp_sessions_with_user_plane": pfcp_sessions_with_and_without_user_plane(silent=False),
        "ngap_registration_flood": registration_flood(0x41),
        "ngap_deregistration_flood": registration_flood(0x45, n=120),
        "ngap_malformed": malformed_ngap(),
        "sbi_enumeration": sbi_enumeration(),
        "sbi_new_peer": sbi_new_peer(),
    }
    return {name: write_pcap(tmp / f"{name}.pcap", [(t0 + t, f) for t, f in frames]) for name, frames in made.items()}
