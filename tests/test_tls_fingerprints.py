"""JA3 and JA4 ClientHello fingerprints: JA3 as tshark computes it, JA4 as an independent reference
computes it from tshark's dissection, GREASE and ALPN on a crafted hello, none for a split hello."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.all import IP, TCP, Ether, Raw, wrpcap

from tests.conftest import PCAPS, decode_file

CAPTURES = ["5greplay_oai.pcap", "suricata-verify_bug-5713-01_TLSv1-Extracted-MaliciousC2.pcap",
            "zeek_tls_tls1.2.pcap"]
JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def ja4_reference(version: int, ciphers: list[int], extensions: list[int], sig_algs: list[int],
                  alpn: str, sni: bool) -> str:
    """JA4 from FoxIO's specification, written from it, not from the decoder."""
    ciphers = [c for c in ciphers if not grease(c)]
    extensions = [e for e in extensions if not grease(e)]
    a = (f"t{JA4_VERSIONS.get(version, '00')}{'d' if sni else 'i'}{min(len(ciphers), 99):02d}"
         f"{min(len(extensions), 99):02d}{(alpn[0] + alpn[-1]) if alpn else '00'}")

    def h(s: str) -> str:
        return hashlib.sha256(s.encode()).hexdigest()[:12] if s else "0" * 12

    b = ",".join(sorted(f"{c:04x}" for c in ciphers))
    c = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (0, 16)))
    if sig_algs:
        c += "_" + ",".join(f"{s:04x}" for s in sig_algs)
    return f"{a}_{h(b)}_{h(c)}"


def tshark_hellos(path: Path) -> list[dict[str, str]]:
    fields = ["tls.handshake.ja3", "tls.handshake.ciphersuite", "tls.handshake.extension.type",
              "tls.handshake.sig_hash_alg", "tls.handshake.extensions_alpn_str",
              "tls.handshake.extensions.supported_version", "tls.handshake.extensions_server_name",
              "tls.handshake.version"]
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "tls.handshake.type==1", "-T", "fields",
                          "-E", "separator=|", *[x for f in fields for x in ("-e", f)]],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines()]


def ints(text: str) -> list[int]:
    return [int(x, 0) for x in text.split(",") if x]


def hellos(path: Path) -> list[dict[str, object]]:
    t = decode_file(path).to_pylist()
    return [r for r in t if r["tls_handshake_type"] == 1]


@pytest.mark.parametrize("name", CAPTURES)
def test_fingerprints_agree_with_tshark(name: str) -> None:
    ours = hellos(PCAPS / name)
    theirs = tshark_hellos(PCAPS / name)
    assert len(ours) == len(theirs) > 0
    for row, t in zip(ours, theirs):
        assert row["tls_ja3"] == t["tls.handshake.ja3"]
        versions = [v for v in ints(t["tls.handshake.extensions.supported_version"]) if not grease(v)]
        version = max(versions) if versions else int(t["tls.handshake.version"], 0)
        alpn = t["tls.handshake.extensions_alpn_str"].split(",")[0]
        assert row["tls_ja4"] == ja4_reference(version, ints(t["tls.handshake.ciphersuite"]),
                                               ints(t["tls.handshake.extension.type"]),
                                               ints(t["tls.handshake.sig_hash_alg"]), alpn,
                                               bool(t["tls.handshake.extensions_server_name"]))


def client_hello(ciphers: list[int], extensions: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack(">H", 0x0303) + bytes(32) + b"\x00"
    body += struct.pack(">H", 2 * len(ciphers)) + b"".join(struct.pack(">H", c) for c in ciphers) + b"\x01\x00"
    ext = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in extensions)
    body += struct.pack(">H", len(ext)) + ext
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def test_grease_alpn_and_split_hellos(tmp_path: Path) -> None:
    sni = b"\x00\x0e\x00\x00\x0bexample.com"
    alpn = b"\x00\x0c\x02h2\x08http/1.1"
    groups = b"\x00\x06\x3a\x3a\x00\x1d\x00\x17"  # GREASE, x25519, secp256r1
    formats = b"\x01\x00"
    sig_algs = b"\x00\x04\x04\x03\x08\x04"
    versions = b"\x04\x1a\x1a\x03\x04"  # GREASE, TLS 1.3
    ciphers = [0x2A2A, 0x1301, 0x1302, 0xC02B]
    exts = [(0x4A4A, b""), (0, sni), (16, alpn), (10, groups), (11, formats), (13, sig_algs), (43, versions)]
    hello = client_hello(ciphers, exts)
    base = Ether() / IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=40000, dport=443, flags="PA")
    wrpcap(str(tmp_path / "hello.pcap"), [base / Raw(hello), base / Raw(hello[:60])])
    whole, split = hellos(tmp_path / "hello.pcap")
    ja3_text = "771,4865-4866-49195,0-16-10-11-13-43,29-23,0"
    assert whole["tls_ja3"] == hashlib.md5(ja3_text.encode()).hexdigest()
    assert whole["tls_ja4"] == ja4_reference(0x0304, ciphers, [t for t, _ in exts], [0x0403, 0x0804], "h2", True)
    assert whole["tls_ja4"].startswith("t13d0306h2_")
    assert split["tls_handshake_type"] == 1 and split["tls_ja3"] is None and split["tls_ja4"] is None
