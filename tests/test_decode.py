"""The decoder against tshark's view of the bundled captures (golden files)."""

from __future__ import annotations

import ipaddress
import json

import numpy as np
import pytest

from tests.conftest import GOLDEN, PCAPS, capture_path, decode_file

GOLDEN_FILES = sorted((GOLDEN / "packets").glob("*.json"))
INT_FIELDS = {"teid": 16, "pfcp_seid": 16, "gtpu_qfi": 0, "pfcp_msg_type": 0, "sctp_ppid": 0, "gtpc_msg_type": 0}


def ip_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def tshark_ip(g: dict, depth: int, which: str) -> str | None:
    layers = [x for x in g.get("protocols", "").split(":") if x in ("ip", "ipv6")]
    if depth >= len(layers):
        return None
    kind = layers[depth]
    k = layers[:depth].count(kind)
    vals = g.get(("ip_" if kind == "ip" else "ipv6_") + which, "").split("|")
    return vals[k] if k < len(vals) else None


def comparable(g: dict, row: dict) -> bool:
    """Frames where tshark shows more than a packet decoder can: reassembly, ICMP-quoted packets, QUIC."""
    protos = g.get("protocols", "")
    return not (row["ip_is_fragment"] or "icmp:ip" in protos or "icmpv6:ipv6" in protos or "quic" in protos)


@pytest.mark.parametrize("golden", GOLDEN_FILES, ids=lambda p: p.stem)
def test_fields_agree_with_tshark(golden) -> None:  # type: ignore[no-untyped-def]
    gold = json.loads(golden.read_text())
    rows = decode_file(capture_path(golden.stem)).drop(["ts"]).to_pylist()
    assert len(rows) == len(gold)
    checked = 0
    for i, (g, r) in enumerate(zip(gold, rows)):
        if not comparable(g, r):
            continue
        depth = r["tunnel_depth"] or 0
        src = tshark_ip(g, depth, "src")
        if src is not None:  # tshark may stop before a malformed inner packet that we still decode
            assert ip_text(r["src_ip"]) == src, f"frame {i + 1} src_ip"
            assert ip_text(r["dst_ip"]) == tshark_ip(g, depth, "dst"), f"frame {i + 1} dst_ip"
        for name, base in INT_FIELDS.items():
            if name == "teid" and name in g and r["gtpc_teid"] is not None:  # tshark's gtp.teid covers GTPv1-C
                assert r["gtpc_teid"] == int(g[name], base)
                checked += 1
            elif name in g:
                assert r[name] == int(g[name], base), f"frame {i + 1} {name}"
                checked += 1
            elif name in ("pfcp_seid", "sctp_ppid", "pfcp_msg_type"):
                assert r[name] is None, f"frame {i + 1} {name} where tshark has none"
        doh = "http2" in g.get("protocols", "")  # DNS inside HTTP/2 bodies (DoH) is not a packet field
        for name in ("tls_sni", "dns_qname", "http_method", "http_host", "http_uri", "http_user_agent", "ssh_banner"):
            # every value tshark decodes from this packet alone, we decode too (tshark also shows
            # values of requests it reassembled from several segments: those are not compared)
            if name in g and not doh and not (name.startswith("http") and r["http_method"] is None and
                                              "http" in g.get("protocols", "") and r["app_proto"] != 3):
                assert r[name] == g[name], f"frame {i + 1} {name}"
                checked += 1
    assert checked or not any(k in g for g in gold for k in INT_FIELDS if k != "teid")


def test_gtpu_5g_fields() -> None:
    t = decode_file(PCAPS / "telekom-5g-trace-visualizer_free5gc.pcap").drop(["ts"]).to_pylist()
    http2 = [r for r in t if r["app_proto"] == 4]
    assert len(http2) > 200  # SBI h2c without the preface is recognised
    pfcp = [r for r in t if r["pfcp_msg_type"] is not None]
    assert {r["pfcp_msg_type"] for r in pfcp} >= {50, 51}  # session establishment request/response
    ngap = [r for r in t if r["sctp_ppid"] == 60]
    assert ngap and all(r["app_proto"] == 11 for r in ngap)


def test_malformed_packets_are_marked_not_raised() -> None:
    t = decode_file(PCAPS / "zeek_tunnels_gtp_gtp1_gn_normal_incl_fragmentation.pcap")
    assert t.num_rows == 108
    frag = [r for r in t.drop(["ts"]).to_pylist() if r["ip_is_fragment"]]
    assert frag


def test_stored_text_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 20 KB request target or Host header, and a 5 KB PFCP node name, are cut to MAX_TEXT_CHARS."""
    from scapy.layers.inet import IP, UDP

    from ingest.replay import replay
    from sensors.generate.attacks import _tcp, write_pcap
    from sensors.protocols.messages import to_table
    from sensors.schema import MAX_TEXT_CHARS

    long_uri = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: example.org\r\n\r\n"
    long_host = b"GET /ok HTTP/1.1\r\nHost: " + b"h" * 20_000 + b"\r\n\r\n"
    short = b"GET /ok HTTP/1.1\r\nHost: example.org\r\n\r\n"
    path = write_pcap(tmp_path / "long.pcap", [(1_700_000_000.0 + i, _tcp(f"10.0.0.{i + 1}", "10.0.0.9", 80, payload))
                                           for i, payload in enumerate([long_uri, long_host, short])])
    packets = decode_file(path).to_pylist()
    assert [p["http_uri"] for p in packets] == ["/" + "a" * (MAX_TEXT_CHARS - 1), "/ok", "/ok"]
    assert [p["http_host"] for p in packets] == [None, "h" * MAX_TEXT_CHARS, "example.org"]
    replay([str(path)], tmp_path / "out", processes=1)  # and so is every copy downstream
    import pyarrow.parquet as pq

    flows = pq.read_table(tmp_path / "out" / "flows.parquet").to_pylist()
    assert max(len(f["server_name"] or "") for f in flows) == MAX_TEXT_CHARS  # the long Host
    assert all(len(line) < 4 * MAX_TEXT_CHARS for line in (tmp_path / "out" / "eve.json").read_text().splitlines())
    table = to_table("pfcp", [{"ts": 0, "packet_row": 0, "node_id": "n" * 5000, "msg_name": "heartbeat_request"}])
    assert table.column("node_id").to_pylist() == ["n" * MAX_TEXT_CHARS]
    assert UDP and IP  # scapy layers registered for the frames above


def test_gathered_strings_are_the_bytes_at_their_offsets() -> None:
    """Block-gathered values equal per-value slices: long and short, empty, unsorted, past the buffer's end,
    with DNS label-length bytes shown as dots."""
    import numpy as np

    from sensors.protocols.packets import gather_strings

    rng = np.random.default_rng(7)
    buf = rng.integers(0, 256, 1 << 17, dtype=np.uint8)
    for trial in range(200):
        k = int(rng.integers(0, 40))
        length = rng.integers(0, 3000 if trial % 2 else 80, k)
        # values apart from one another (as packets are), in any order; some running past the buffer's end
        off = np.concatenate([[0], np.cumsum(length + rng.integers(0, 30, k))[:-1]]).astype(np.int64)
        order = rng.permutation(k)
        off, length = off[order] + (len(buf) - 2000 if trial % 5 == 0 else 0), length[order]
        dots = rng.integers(0, len(buf), 2000) if trial % 3 == 0 and trial % 5 else None
        n = k + 3
        rows = rng.choice(n, k, replace=False)  # in any order
        got = gather_strings(buf, n, rows, off, length, dots, raw=trial % 4 == 0).to_pylist()
        for row, o, ln in zip(rows.tolist(), off.tolist(), length.tolist()):
            raw = bytes(buf[np.minimum(np.arange(o, o + ln), len(buf) - 1)])
            if trial % 4 == 0:
                assert got[row] == raw
                continue
            text = bytearray(b if 0x20 <= b <= 0x7E else ord("?") for b in raw)
            for d in (dots if dots is not None else []):
                if o <= d < o + ln:
                    text[d - o] = ord(".")
            assert got[row] == text.decode()
        assert sum(v is None for v in got) == n - k


def test_masks_read_from_buffers_agree_with_pyarrow() -> None:
    """present() and true_mask() give what is_valid() / fill_null(False) give: sliced, chunked, all-null,
    nested and empty arrays."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from sensors.masks import present, true_mask

    rng = np.random.default_rng(3)
    flags = [None if x < 0.2 else bool(x < 0.6) for x in rng.random(1000)]
    bools = [pa.array(flags), pa.array(flags).slice(3, 517), pa.nulls(9, pa.bool_()), pa.array([], pa.bool_()),
             pa.array([True, False] * 40).slice(7), pa.chunked_array([pa.array(flags[:300]), pa.array(flags[300:])]),
             pa.chunked_array([], pa.bool_())]
    for arr in bools:
        assert true_mask(arr).tolist() == pc.fill_null(arr, False).to_pylist()
    others = [pa.array([None if f is None else i for i, f in enumerate(flags)], pa.uint16()).slice(11),
              pa.array(["a", None, "b"] * 50), pa.array([1, 2, 3]), pa.nulls(5, pa.string()),
              pc.extract_regex(pa.array(["GET /x", "no", None] * 30), r"^(?P<m>[A-Z]+) "), *bools]
    for arr in others:
        assert present(arr).tolist() == arr.is_valid().to_pylist()


def _decode_some_columns(names: tuple[str, ...], columns: frozenset[str] | set[str]) -> set[str]:
    """decode(columns=...) of these captures against a full decode: the columns asked for are the same, every
    other one is null, and keying gives the same keys; returns the columns a full decode gave values."""
    from detection.flows.keys import key_packets
    from sensors.capture.source import read_frames
    from sensors.decode import decode

    filled: set[str] = set()
    for name in names:
        for frames in read_frames(str(PCAPS / name)):
            full, some = decode(frames), decode(frames, columns)
            assert full.schema == some.schema
            for column in full.column_names:
                if column in columns:
                    assert some.column(column).equals(full.column(column)), (name, column)
                else:
                    assert some.column(column).null_count == some.num_rows, (name, column)
                filled |= {column} if full.column(column).null_count < full.num_rows else set()
            assert key_packets(some).equals(key_packets(full))
    return filled


def test_a_decode_without_payload_columns_skips_payload_inspection_only() -> None:
    """Without the columns of the sensitive-data scan, TLS fingerprints and signalling payloads, their work is
    skipped (``Packets.wants``) and every other column is the same."""
    from sensors.schema import PACKET_SCHEMA

    skipped = {"tls_ja3", "tls_ja4", "cp_payload", "cp_more", "pii_kinds", "pii_masked"}
    filled = _decode_some_columns(("5greplay_oai.pcap", "5greplay_ue_authetication.pcapng", "zeek_tls_tls1.2.pcap"),
                                  set(PACKET_SCHEMA.names) - skipped)
    assert skipped <= filled  # each skipped column has values in a full decode of these captures


def test_a_flow_meter_decode_fills_only_the_columns_it_reads() -> None:
    """As ``replay --flows-only`` decodes: only the columns keying and the traffic counters read."""
    from ingest.pipeline import FLOW_METER_COLUMNS

    filled = _decode_some_columns(("zeek_http_ctu-62604-80.pcap", "5greplay_oai.pcap", "arkime_gtp-iphone.pcap",
                                   "telekom-5g-trace-visualizer_sample_of_http2.pcap"), FLOW_METER_COLUMNS)
    # the server names and tunnel ids it keeps, and what it leaves out, have values in these captures
    assert {"http_host", "tls_sni", "dns_qname", "teid", "cp_payload", "http_user_agent", "tls_ja3"} <= filled


def test_a_decode_for_some_columns_stores_only_those_and_what_dissectors_read_back() -> None:
    """Columns nobody asked for are not stored (their values are not kept), except those a later layer reads
    back; reading any other one is a dissector bug, and fails loudly rather than reading zeros."""
    from sensors.capture.source import read_frames
    from sensors.protocols.packets import READ_BACK, Packets

    frames = next(read_frames(str(PCAPS / "arkime_gtp-u.pcap")))
    pk = Packets(frames, {"ts", "teid"})
    rows = np.arange(pk.n)
    pk.put("ip_ttl", rows, 64)
    pk.put("teid", rows, 7)
    pk.put("src_port", rows, 80)  # read back by the application dissectors
    assert set(pk.values) == {"teid", "src_port"} and "src_port" in READ_BACK
    with pytest.raises(AssertionError, match="ip_ttl is read back"):
        pk.get("ip_ttl", rows)
    with pytest.raises(AssertionError, match="ip_ttl is read back"):
        pk.has("ip_ttl", rows)
    assert not pk.has("tls_sni", rows).any()  # text columns: written or not, they are stored apart
