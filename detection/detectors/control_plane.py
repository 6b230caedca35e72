"""Detectors over the control events of the session table (``detection.sessions``).

The session table links N2, N4, N3 and the SBI; what contradicts the state it
learned, or what it counts, becomes an alert here:

- a PFCP session modification/deletion from a node that did not create the
  session (a spoofed or rogue SMF tearing down subscribers' sessions);
- a PFCP modification/deletion for a SEID no session at that UPF holds, when
  the UPF's association was observed (so every session it has was seen set up);
- G-PDUs to an N3 TEID that no session holds at such a UPF (user plane without
  control plane: injection or a forged tunnel), and the reverse: a PFCP session
  set up and deleted without a G-PDU while its UPF's N3 carried others';
- uplink G-PDUs whose inner source is not the UE address PFCP bound to their
  TEID (a UE or attacker spoofing another UE's address);
- registration and deregistration floods from one gNB (NAS signalling storms);
- malformed NGAP/NAS;
- SBI calls from a client to a service it never used in the learned topology,
  and SBI subscriber enumeration (one client asking for many subscribers).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from detection.detectors.base import ControlDetector, LruDict
from detection.rules.compiler import in_networks


class PfcpForeignSessionRequest(ControlDetector):
    rule_id = "3c1f7a52-9d84-4b6e-a0f3-5e2d8c7b9a14"
    title = "PFCP session modification/deletion from a node that did not create the session"
    description = ("A PFCP Session Modification or Deletion Request for a UPF session came from an address other "
                   "than the SMF that established it: a rogue or spoofed SMF tampering with subscribers' sessions.")
    level = "critical"
    tags = ["fight.fgt1557", "attack.t1499", "attack.t1565", "liaowang.5g"]
    category = "Attempted Denial of Service"
    kinds = ("pfcp_foreign_session_request",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s


class PfcpUnknownSessionRequest(ControlDetector):
    rule_id = "8b2e4d61-0c7a-4f35-9e18-6a4c2b7d3f90"
    title = "PFCP session modification/deletion for a session that does not exist at the UPF"
    description = ("A PFCP Session Modification or Deletion Request names a SEID that no session established at "
                   "the UPF holds, although the UPF's association and sessions were observed from the start: "
                   "SEID guessing against the N4 interface.")
    level = "high"
    tags = ["fight.fgt1557", "attack.t1499", "liaowang.5g"]
    category = "Attempted Denial of Service"
    kinds = ("pfcp_unknown_session_request",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s


class GtpuUnknownSessionTeid(ControlDetector):
    rule_id = "f4a9c2e7-6b13-4d8f-b5a0-2c7e9d1f3b68"
    title = "GTP-U to a TEID that no PFCP session established (user plane without control plane)"
    description = ("G-PDUs reach an N3 TEID at a UPF although no session set up over the UPF's observed PFCP "
                   "association holds that TEID: forged tunnels or traffic injected into the user plane.")
    level = "high"
    tags = ["fight.fgt5005", "attack.t1599", "liaowang.5g"]
    category = "Potentially Bad Traffic"
    kinds = ("gtpu_unknown_teid",)
    columns: ClassVar[list[str]] = ["ts", "kind", "key", "tunnel_src_ip", "tunnel_dst_ip"]
    group_by = ("tunnel_src_ip", "tunnel_dst_ip")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s


class PfcpSessionWithoutUserPlane(ControlDetector):
    rule_id = "5e0b8c3a-7d21-4f96-a4e8-1c9b6f2d7a53"
    title = "PFCP session set up and deleted without user-plane traffic"
    description = ("A PDU session was established over N4 and deleted again without a single G-PDU at its UPF, "
                   "although the UPF's N3 carried other sessions' traffic in view of the sensor: signalling "
                   "without a user plane (sessions opened to probe or exhaust the core, a UE that cannot reach "
                   "the data network, or a misrouted N3). Judged once the session's flows could no longer "
                   "arrive, so the alert comes late in event time.")
    level = "low"
    tags = ["fight.fgt1499", "attack.t1499", "liaowang.5g"]
    category = "Misc activity"
    kinds = ("pfcp_session_without_user_plane",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, window_s: float = 3600.0) -> None:
        self.window_s = window_s


class GtpuUeAddressMismatch(ControlDetector):
    rule_id = "0d7b3e95-2f4c-4a61-8c9e-7b5a1d3f6e24"
    title = "GTP-U uplink from an address not bound to its TEID (UE IP spoofing)"
    description = ("Uplink G-PDUs on a TEID that PFCP bound to one UE carry inner packets from another source "
                   "address: a UE spoofing addresses, or an attacker using a stolen TEID.")
    level = "critical"
    tags = ["fight.fgt5005", "attack.t1565", "liaowang.5g"]
    category = "Potentially Bad Traffic"
    kinds = ("gtpu_ue_address_mismatch",)
    group_by = ("src_ip", "key")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s


class NgapRegistrationFlood(ControlDetector):
    rule_id = "5e8c1b74-3a9d-4f26-b0e5-9d2a7c4f1b83"
    title = "Registration request flood from one gNB (NAS signalling storm)"
    description = ("Many NAS Registration Requests from one gNB in a short window: a registration storm, a "
                   "rogue gNB or a signalling DoS against the AMF.")
    level = "high"
    tags = ["fight.fgt1499.501", "attack.t1499", "liaowang.5g"]
    category = "Attempted Denial of Service"
    kinds = ("ngap_registration_request",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, threshold: int = 100, window_s: float = 10.0) -> None:
        self.threshold = threshold
        self.window_s = window_s


class NgapDeregistrationFlood(ControlDetector):
    rule_id = "a1d6f3c8-7e25-4b9a-9f04-3c8b2e6d5a71"
    title = "UE deregistration flood from one gNB"
    description = ("Many UE-originated Deregistration Requests from one gNB in a short window: forged detaches "
                   "knocking subscribers off the network.")
    level = "high"
    tags = ["fight.fgt1499.501", "attack.t1499", "liaowang.5g"]
    category = "Attempted Denial of Service"
    kinds = ("ngap_deregistration_request",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, threshold: int = 50, window_s: float = 10.0) -> None:
        self.threshold = threshold
        self.window_s = window_s


class NgapMalformed(ControlDetector):
    rule_id = "c7e2a9d4-1b58-4f3c-a6e0-8d4f2b9c7e15"
    title = "Malformed NGAP/NAS message"
    description = ("An NGAP or NAS-5GS message the ASN.1/NAS decoder found malformed: fuzzing of the AMF or gNB, "
                   "or an exploit attempt against their parsers.")
    level = "medium"
    tags = ["fight.fgt1190", "attack.t1190", "liaowang.5g"]
    category = "Attempted Administrator Privilege Gain"
    kinds = ("ngap_malformed",)
    group_by = ("src_ip", "dst_ip")

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s


class SbiNewPeer(ControlDetector):
    """Per SBI client address, the services it called in its warm-up; later calls to new ones are flagged."""

    rule_id = "9f3b6c21-8d4e-4a7b-b2f5-1e6c9a3d7b58"
    title = "SBI call between network functions that never talked in the learned topology"
    description = ("An address calls an NF service (e.g. nudm-sdm) it never called during the baseline or its "
                   "warm-up: a compromised NF moving laterally, or a rogue NF on the service-based interface.")
    level = "medium"
    tags = ["fight.fgt1021", "attack.t1021", "liaowang.5g"]
    category = "Potentially Bad Traffic"
    kinds = ("sbi_request",)
    columns: ClassVar[list[str]] = ["ts", "kind", "key", "src_ip", "dst_ip", "dst_port"]
    group_by = ("src_ip", "key")

    instant = False  # its warm-up clock and learned pairs need a window's events in time order

    def __init__(self, warmup_s: float = 3600.0, known_clients: tuple[str, ...] = (),
                 window_s: float = 300.0) -> None:
        self.warmup_s = warmup_s
        self.known_clients = known_clients
        self.window_s = window_s

    def evaluate(self, events: pa.Table) -> np.ndarray:
        if not hasattr(self, "pairs_"):
            self.pairs_: LruDict[tuple[str, str], None] = LruDict()
            self.since_ns_: LruDict[str, int] = LruDict()
        out = np.zeros(events.num_rows, dtype=bool)
        ts = events.column("ts").cast(pa.int64()).to_pylist()
        warmup_ns = int(self.warmup_s * 1e9)
        for i, (src, key) in enumerate(zip(events.column("src_ip").to_pylist(), events.column("key").to_pylist())):
            service = str(key).split(">")[-1]
            since = self.since_ns_.setdefault(src, ts[i])
            if (src, service) in self.pairs_:
                continue
            self.pairs_[(src, service)] = None
            out[i] = ts[i] - since >= warmup_ns
        return out & ~in_networks(events.column("src_ip"), self.known_clients)

    def explain(self, events: pa.Table) -> list[str | None]:
        return [f"{src} called {key.split('>')[-1]} ({dst}:{port}) for the first time"
                for src, key, dst, port in zip(*(events.column(c).to_pylist()
                                                 for c in ("src_ip", "key", "dst_ip", "dst_port")))]


class SbiSubscriberEnumeration(ControlDetector):
    """One SBI client asking for many different subscribers in a window: harvesting subscriber data."""

    rule_id = "2b8d5f14-6c3a-4e97-a1d0-7f4b9e2c5a36"
    title = "SBI subscriber enumeration (one client asks for many subscribers)"
    description = ("One address requests data of many distinct subscribers (SUPIs/GPSIs in SBI paths, e.g. "
                   "nudm-sdm or nudr-dr) within the window: subscriber data harvesting by a compromised or rogue NF.")
    level = "high"
    tags = ["fight.fgt1087", "attack.t1087", "attack.t1213", "liaowang.5g"]
    category = "Attempted Information Leak"
    kinds = ("sbi_request",)
    columns: ClassVar[list[str]] = ["ts", "kind", "key", "src_ip", "dst_ip", "detail"]
    group_by = ("src_ip",)

    instant = False  # judges a window's events together

    def __init__(self, min_subscribers: int = 50, window_s: float = 60.0) -> None:
        self.min_subscribers = min_subscribers
        self.window_s = window_s

    def evaluate(self, events: pa.Table) -> np.ndarray:
        subscribers: dict[str, set[str]] = {}
        srcs = events.column("src_ip").to_pylist()
        for src, sub in zip(srcs, events.column("detail").to_pylist()):
            if sub:
                subscribers.setdefault(src, set()).add(sub)
        many = {s for s, subs in subscribers.items() if len(subs) >= self.min_subscribers}
        self.counts_ = {s: len(subscribers[s]) for s in many}
        return np.array([s in many and d is not None for s, d in zip(srcs, events.column("detail").to_pylist())],
                        dtype=bool)

    def explain(self, events: pa.Table) -> list[str | None]:
        return [f"{s} requested {self.counts_.get(s, 0)} distinct subscribers within {self.window_s:g} s"
                for s in events.column("src_ip").to_pylist()]


def control_plane_detectors() -> list[ControlDetector]:
    return [PfcpForeignSessionRequest(), PfcpUnknownSessionRequest(), PfcpSessionWithoutUserPlane(), GtpuUnknownSessionTeid(),
            GtpuUeAddressMismatch(), NgapRegistrationFlood(), NgapDeregistrationFlood(), NgapMalformed(),
            SbiNewPeer(), SbiSubscriberEnumeration()]
