"""Multi-stage attack scenarios with known stories, for evaluating the incident builder.

One capture holds several stories side by side in time; :data:`STORIES` names,
per story, the addresses that only it uses, so every alert can be given its true
story (``story_of``) without looking at how it was detected:

- ``intrusion``: one internal host scans a server's ports, brute-forces its SSH,
  then beacons to an external C2 server and finally uploads 21 MB to a new
  external host (discovery -> credential access -> command and control ->
  exfiltration);
- ``n4_attack``: a host on the N4 network scans the UPF's ports, then deletes a
  PFCP session the SMF set up (reconnaissance of N4, then session tampering);
- ``sweep``: an unrelated host sweeps port 445 across a subnet;
- ``flood``: a SYN flood from spoofed sources towards one web server.
"""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, TCP

from sensors.generate.attacks import _eth, _variants, write_pcap
from sensors.generate.control_plane import SMF, UPF_N3, UPF_N4, _ie, _ip4, _n4, _pfcp

INTRUDER, SERVER, C2, DROP = "10.0.0.66", "10.0.0.10", "203.0.113.50", "198.51.100.77"
N4_ATTACKER = "10.60.0.99"
SWEEPER = "10.0.0.77"
FLOOD_TARGET = "10.0.0.5"

#: story -> the addresses that are its own (an alert naming one of them, as source or target, is of the story)
STORIES: dict[str, set[str]] = {
    "intrusion": {INTRUDER, C2, DROP},
    "n4_attack": {N4_ATTACKER, UPF_N4},
    "sweep": {SWEEPER},
    "flood": {FLOOD_TARGET},
}


def story_of(src: str | None, dst: str | None) -> str | None:
    """The story an alert with these addresses belongs to (source first: a target can be shared)."""
    for address in (src, dst):
        for story, own in STORIES.items():
            if address in own:
                return story
    return None


def _syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    return _eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def _session(t: float, src: str, dst: str, sport: int, dport: int, data: list[tuple[bool, bytes]]) -> list[
        tuple[float, bytes]]:
    """A whole TCP session: handshake, ``data`` (True: from the client), FIN both ways, 10 ms apart."""
    frames = [(src, dst, sport, dport, "S", b""), (dst, src, dport, sport, "SA", b""), (src, dst, sport, dport, "A", b"")]
    frames += [((src, dst, sport, dport) if up else (dst, src, dport, sport)) + ("PA", payload)
               for up, payload in data]
    frames += [(src, dst, sport, dport, "FA", b""), (dst, src, dport, sport, "FA", b"")]
    return [(t + i * 0.01, _eth(IP(src=a, dst=b) / TCP(sport=sp, dport=dp, flags=f) / p))
            for i, (a, b, sp, dp, f, p) in enumerate(frames)]


def intrusion(t0: float) -> list[tuple[float, bytes]]:
    frames = [(t0 + i * 0.02, _syn(INTRUDER, SERVER, 45000, port)) for i, port in enumerate(range(1, 301))]
    ssh = [(False, b"SSH-2.0-OpenSSH_8.9\r\n"), (True, b"SSH-2.0-libssh_0.9\r\n"), (True, b"\x00" * 300),
           (False, b"\x00" * 300)]
    for k in range(20):  # failed logins: short sessions, 15 s apart
        frames += _session(t0 + 60 + k * 15, INTRUDER, SERVER, 46000 + k, 22, ssh)
    for k in range(12):  # beacons every 30 s
        frames += _session(t0 + 600 + k * 30 + 0.2 * (k % 3), INTRUDER, C2, 47000 + k, 443, [(True, b"b" * 180)])
    upload = _eth(IP(src=INTRUDER, dst=DROP) / TCP(sport=48000, dport=443, flags="A") / (b"u" * 1400))
    frames += [(t0 + 1200, _syn(INTRUDER, DROP, 48000, 443))]
    frames += [(t0 + 1200.01 + i * 0.0005, upload) for i in range(15_000)]
    return frames


def n4_attack(t0: float) -> list[tuple[float, bytes]]:
    """The SMF sets up a session; a host on N4 scans the UPF, then deletes that session."""
    node, up_node = _ie(60, b"\x00" + _ip4(SMF)), _ie(60, b"\x00" + _ip4(UPF_N4))
    est = node + _ie(57, b"\x02" + struct.pack("!Q", 0x21) + _ip4(SMF))
    created = (_ie(19, b"\x01") + up_node + _ie(57, b"\x02" + struct.pack("!Q", 0x9101) + _ip4(UPF_N4))
               + _ie(8, _ie(56, b"\x00\x01") + _ie(21, b"\x01" + struct.pack("!I", 0x300) + _ip4(UPF_N3))))
    frames = [(t0, _n4(SMF, UPF_N4, _pfcp(5, 1, node))), (t0 + 0.01, _n4(UPF_N4, SMF, _pfcp(6, 1, up_node))),
              (t0 + 1, _n4(SMF, UPF_N4, _pfcp(50, 2, est, seid=0))),
              (t0 + 1.01, _n4(UPF_N4, SMF, _pfcp(51, 2, created, seid=0x21)))]
    frames += [(t0 + 100 + i * 0.02, _syn(N4_ATTACKER, UPF_N4, 45500, port)) for i, port in enumerate(range(1, 301))]
    frames += [(t0 + 400, _n4(N4_ATTACKER, UPF_N4, _pfcp(54, 9, b"", seid=0x9101)))]
    return frames


def sweep(t0: float) -> list[tuple[float, bytes]]:
    template = _eth(IP(src=SWEEPER, dst="10.1.0.0") / TCP(sport=50000, dport=445, flags="S"))
    return [(t0 + i * 0.1, f) for i, f in enumerate(_variants(template, 80, 32))]


def flood(t0: float) -> list[tuple[float, bytes]]:
    template = _eth(IP(src="198.18.0.0", dst=FLOOD_TARGET) / TCP(sport=40000, dport=80, flags="S"))
    return [(t0 + i * 0.001, f) for i, f in enumerate(_variants(template, 3000, 28))]  # spoofed sources


def rising_scans(path: Path, t0: float = 1_700_000_000.0, minutes: int = 12, ports: int = 110) -> Path:
    """A scanning campaign that grows: in minute k (from 1) k new hosts each scan ``ports`` ports of one server
    (one vertical-scan alert each), so alerts and packets per minute rise steadily, for the trend forecast."""
    frames = []
    for k in range(1, minutes + 1):
        for j in range(k):
            src = f"10.0.{5 + k}.{10 + j}"
            start = t0 + (k - 1) * 60 + j * 60 / k
            frames += [(start + i * 0.04, _syn(src, SERVER, 40000 + j, port)) for i, port in enumerate(range(1, ports + 1))]
    frames.sort(key=lambda f: f[0])
    return write_pcap(path, frames)


def multi_stage(path: Path, t0: float = 1_700_000_000.0) -> Path:
    """Every story in one capture, interleaved in time (about 25 minutes)."""
    frames = intrusion(t0) + n4_attack(t0 + 30) + sweep(t0 + 200) + flood(t0 + 900)
    frames.sort(key=lambda f: f[0])
    return write_pcap(path, frames)


__all__ = ["STORIES", "multi_stage", "rising_scans", "story_of"]
