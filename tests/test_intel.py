"""Threat intelligence: STIX 2.1, MISP and plain-list feeds read as their formats say, matched against real
captures (a stealer's C2 URL, a malicious C2's JA3, a domain inside a GTP-U tunnel, the multi-stage scenario's
C2 address), expiry by event time, reload without restart, and clear errors for broken configurations."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from console.cli import main
from console.containment import Plan, render
from detection.intel import IntelConfigError, IntelFeeds, misp, plain, stix
from ingest.replay import replay
from sensors.generate.scenarios import C2, INTRUDER, multi_stage
from tests.conftest import PCAPS

CTU = PCAPS / "zeek_http_ctu-62604-80.pcap"  # GET http://45.9.74.78/c2sock (a stealer's C2)
MALICIOUS_TLS = PCAPS / "suricata-verify_bug-5713-01_TLSv1-Extracted-MaliciousC2.pcap"
GTP_DNS = PCAPS / "arkime_gtp-iphone.pcap"  # DNS for sentitlement.mobile.att.net inside GTP-U
MALICIOUS_JA3 = "49ed2ef3f1321e5f044f1e71b0e6fdd5"


def stix_bundle(*indicators: dict[str, Any]) -> str:
    return json.dumps({"type": "bundle", "id": "bundle--1", "objects": [
        {"type": "identity", "id": "identity--1", "name": "lab"},
        *({"type": "indicator", "spec_version": "2.1", "pattern_type": "stix", "id": f"indicator--{i}",
           "valid_from": "2010-01-01T00:00:00Z", **ind} for i, ind in enumerate(indicators))]})


def test_stix_patterns_become_indicators_and_compound_ones_are_counted_out() -> None:
    parsed = stix.parse(stix_bundle(
        {"name": "C2", "pattern": "[ipv4-addr:value = '203.0.113.50'] OR [domain-name:value = 'Evil.Example.']",
         "confidence": 90},
        {"name": "net", "pattern": "[ipv4-addr:value ISSUBSET '198.51.100.0/24']", "valid_until": "2030-01-01T00:00:00Z"},
        {"name": "url", "pattern": "[url:value = 'http://45.9.74.78/c2sock']", "confidence": 40},
        {"name": "hash", "pattern": "[file:hashes.'SHA-256' = '" + "ab" * 32 + "']"},
        {"name": "both", "pattern": "[ipv4-addr:value = '192.0.2.1' AND domain-name:value = 'x.example']"},
        {"name": "old", "pattern": "[ipv4-addr:value = '192.0.2.2']", "revoked": True},
        {"name": "email", "pattern": "[email-addr:value = 'a@b.example']"},
    ), "medium")
    got = {(i.type, i.value, i.level) for i in parsed.indicators}
    assert got == {("ip", "203.0.113.50", "high"), ("domain", "evil.example", "high"),
                   ("ip", "198.51.100.0/24", "medium"), ("url", "45.9.74.78/c2sock", "low"),
                   ("sha256", "ab" * 32, "medium")}
    net = next(i for i in parsed.indicators if i.value == "198.51.100.0/24")
    assert net.valid_until_ns == 1_893_456_000 * 10**9 and net.valid_from_ns == 1_262_304_000 * 10**9
    assert parsed.skipped == {"compound pattern (AND/FOLLOWEDBY)": 1, "revoked": 1, "object email-addr": 1}


def test_misp_events_keep_to_ids_attributes_with_the_events_threat_level() -> None:
    event = {"Event": {"info": "stealer campaign", "threat_level_id": "1", "Attribute": [
        {"type": "ip-dst|port", "value": "45.9.74.78|80", "to_ids": True, "timestamp": "1600000000"},
        {"type": "domain|ip", "value": "c2.example|192.0.2.9", "to_ids": True},
        {"type": "url", "value": "http://45.9.74.78/c2sock", "to_ids": True},
        {"type": "ja3-fingerprint-md5", "value": MALICIOUS_JA3.upper(), "to_ids": True},
        {"type": "comment", "value": "seen in the wild", "to_ids": False},
        {"type": "ip-src", "value": "192.0.2.10", "to_ids": True, "deleted": True},
        {"type": "ip-src", "value": "not-an-ip", "to_ids": True},
    ], "Object": [{"name": "file", "Attribute": [{"type": "sha1", "value": "a" * 40, "to_ids": True}]}]}}
    parsed = misp.parse(json.dumps({"response": [event]}), "low", max_age_ns=86_400 * 10**9)
    got = {(i.type, i.value) for i in parsed.indicators}
    assert got == {("ip", "45.9.74.78"), ("domain", "c2.example"), ("ip", "192.0.2.9"), ("url", "45.9.74.78/c2sock"),
                   ("ja3", MALICIOUS_JA3), ("sha1", "a" * 40)}
    assert {i.level for i in parsed.indicators} == {"high"} and {i.name for i in parsed.indicators} == {"stealer campaign"}
    dated = next(i for i in parsed.indicators if i.value == "45.9.74.78")
    assert dated.valid_until_ns == (1_600_000_000 + 86_400) * 10**9  # max_age from the attribute's timestamp
    assert parsed.skipped == {"not to_ids": 1, "deleted": 1, "malformed ip": 1}
    with pytest.raises(ValueError, match="not a MISP event"):
        misp.parse(json.dumps({"hello": 1}), "low")


def test_plain_lists_guess_types_and_refuse_to_guess_32_hex_digits() -> None:
    text = "\n".join(["# feodo tracker", "value,type", "203.0.113.50", "198.51.100.0/24  ", "evil.example.",
                      "http://45.9.74.78/c2sock", MALICIOUS_JA3, f"{MALICIOUS_JA3},ja3", "c" * 64,
                      "t13d1516h2_8daaf6152771_e5627efa2ab1", "???", ""])
    parsed = plain.parse(text, "high")
    assert [(i.type, i.value) for i in parsed.indicators] == [
        ("ip", "203.0.113.50"), ("ip", "198.51.100.0/24"), ("domain", "evil.example"), ("url", "45.9.74.78/c2sock"),
        ("ja3", MALICIOUS_JA3), ("sha256", "c" * 64), ("ja4", "t13d1516h2_8daaf6152771_e5627efa2ab1")]
    assert parsed.skipped == {"type unknown (32 hex digits: JA3 or MD5?)": 1, "type unknown": 1}
    assert [i.type for i in plain.parse(MALICIOUS_JA3, "high", kind="ja3").indicators] == ["ja3"]


def write_feeds(tmp: Path, feeds: list[dict[str, Any]], files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp / name).write_text(text)
    config = tmp / "intel.yml"
    config.write_text(yaml.safe_dump({"feeds": feeds}))
    return config


@pytest.fixture(scope="module")
def intel_replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("intel")
    config = write_feeds(tmp, [
        {"name": "cti-stix", "path": "c2.json"},
        {"name": "misp-stealers", "path": "misp.json", "level": "medium"},
        {"name": "ja3-blocklist", "path": "ja3.txt", "type": "ja3", "level": "critical"},
        {"name": "expired", "path": "expired.txt", "max_age_days": 1},
    ], {
        "c2.json": stix_bundle({"name": "scenario C2", "pattern": f"[ipv4-addr:value = '{C2}']", "confidence": 95}),
        "misp.json": json.dumps({"Event": {"info": "stealer", "threat_level_id": "4", "Attribute": [
            {"type": "url", "value": "http://45.9.74.78/c2sock", "to_ids": True},
            {"type": "hostname", "value": "att.net", "to_ids": True}]}}),
        "ja3.txt": f"# malicious C2 client\n{MALICIOUS_JA3}\n",
        "expired.txt": "45.9.74.78\n",
    })
    # a plain list's indicators are dated by its file: this one's expired on 2022-01-02, before the CTU capture
    os.utime(tmp / "expired.txt", (1_641_000_000, 1_641_000_000))
    scenario = multi_stage(tmp / "multi_stage.pcap")
    out = tmp / "out"
    replay([str(scenario), str(CTU), str(MALICIOUS_TLS), str(GTP_DNS)], out, processes=1, intel=config)
    return out, config


def intel_alerts(out: Path) -> list[dict[str, Any]]:
    alerts = pq.read_table(out / "alerts.parquet")
    rows = alerts.drop_columns(["first_seen", "last_seen"]).to_pylist()
    return [r for r in rows if r["detector"] == "intel"]


def test_replay_raises_alerts_naming_feed_and_indicator(intel_replay: tuple[Path, Path]) -> None:
    out, _ = intel_replay
    found = {(json.loads(a["evidence"])["group"]["intel_feed"], json.loads(a["evidence"])["group"]["intel_indicator"],
              a["level"], a["src_ip"]) for a in intel_alerts(out)}
    assert ("cti-stix", C2, "orange", INTRUDER) in found  # confidence 95: high -> orange; the beaconing host acts
    assert any(f[:3] == ("misp-stealers", "45.9.74.78/c2sock", "yellow") for f in found)  # level: the feed's
    assert any(f[:3] == ("ja3-blocklist", MALICIOUS_JA3, "red") for f in found)
    assert any(f[:2] == ("misp-stealers", "att.net") for f in found)  # a subdomain, inside GTP-U
    assert not any(f[0] == "expired" for f in found)
    details = {a["detail"] for a in intel_alerts(out)}
    assert any(d.startswith("misp-stealers: domain att.net (dns_qname sentitlement.mobile.att.net)") for d in details)
    assert any(d.startswith(f"cti-stix: ip {C2} (dst_ip {C2})") for d in details)


def test_intel_alert_joins_the_intruders_incident(intel_replay: tuple[Path, Path]) -> None:
    out, _ = intel_replay
    incidents = pq.read_table(out / "incidents.parquet").to_pylist()
    story = [i for i in incidents if f"host:{INTRUDER}" in i["entities"]]
    assert len(story) == 1
    signatures = {s for stage in story[0]["stages"] for s in stage["signatures"]}
    assert "Threat intelligence indicator matched (high)" in signatures
    assert story[0]["level"] == "red"


def test_feed_status_is_written(intel_replay: tuple[Path, Path]) -> None:
    out, _ = intel_replay
    status = {r["feed"]: r for r in pq.read_table(out / "intel_feeds.parquet").to_pylist()}
    assert set(status) == {"cti-stix", "misp-stealers", "ja3-blocklist", "expired"}
    assert json.loads(status["misp-stealers"]["by_type"]) == {"domain": 1, "url": 1}
    assert status["cti-stix"]["format"] == "stix" and status["misp-stealers"]["format"] == "misp"
    assert status["ja3-blocklist"]["indicators"] == 1 and status["cti-stix"]["error"] is None


def test_expiry_is_judged_by_event_time(tmp_path: Path) -> None:
    """An indicator valid only after the capture, or expired before it, matches nothing; one valid then does."""
    def run(valid: dict[str, str], name: str) -> list[dict[str, Any]]:
        config = write_feeds(tmp_path, [{"name": name, "path": f"{name}.json"}], {
            f"{name}.json": stix_bundle({"pattern": "[url:value = 'http://45.9.74.78/c2sock']", **valid})})
        replay([str(CTU)], tmp_path / name, processes=1, intel=config)
        return intel_alerts(tmp_path / name)

    assert run({"valid_from": "2010-01-01T00:00:00Z", "valid_until": "2011-01-01T00:00:00Z"}, "expired") == []
    assert run({"valid_from": "2099-01-01T00:00:00Z"}, "future") == []
    assert len(run({"valid_from": "2010-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z"}, "valid")) == 1


def test_feeds_reload_without_restart_and_keep_working_ones(tmp_path: Path) -> None:
    config = write_feeds(tmp_path, [{"name": "list", "path": "list.txt"}], {"list.txt": "203.0.113.50\n"})
    feeds = IntelFeeds(config, check_interval_s=0.0)
    assert feeds.matcher().size == 1
    time.sleep(0.01)
    (tmp_path / "list.txt").write_text("203.0.113.50\n198.51.100.0/24\nevil.example\n")
    os.utime(tmp_path / "list.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert feeds.matcher().size == 3 and feeds.reloads == 1
    # a feed added to the configuration is read; a broken configuration edit keeps the feeds
    (tmp_path / "more.json").write_text(stix_bundle({"pattern": "[domain-name:value = 'c2.example']"}))
    config.write_text(yaml.safe_dump({"feeds": [{"name": "list", "path": "list.txt"},
                                                {"name": "more", "path": "more.json"}]}))
    os.utime(config, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert feeds.matcher().size == 4
    config.write_text("feeds: [oops")
    os.utime(config, ns=(time.time_ns(), time.time_ns() + 3 * 10**9))
    assert feeds.matcher().size == 4
    # a feed file that breaks keeps its previous indicators, and says why
    (tmp_path / "more.json").write_text("{not json")
    os.utime(tmp_path / "more.json", ns=(time.time_ns(), time.time_ns() + 4 * 10**9))
    assert feeds.matcher().size == 4
    status = {r["feed"]: r for r in feeds.status().to_pylist()}
    assert status["more"]["error"].startswith("not valid JSON") and status["more"]["indicators"] == 1


def test_containment_stix_export_imports_as_a_feed(tmp_path: Path) -> None:
    """What one Liaowang exports to block, another (or a firewall's intel platform) can import."""
    plan = Plan()
    plan.block("203.0.113.50", "inc-1", "scenario C2", {})
    plan.block("2001:db8::66", "inc-1", "scenario C2", {})
    text = render(plan, "stix", "analyst")
    parsed = stix.parse(text, "high")
    assert {(i.type, i.value) for i in parsed.indicators} == {("ip", "203.0.113.50"), ("ip", "2001:db8::66")}


@pytest.mark.parametrize(("feeds", "message"), [
    ({"feeds": "x"}, "'feeds' must be a list"),
    ({"feeds": [{"name": "a", "path": "a.txt", "level": "extreme"}]}, "feeds[0].level: 'extreme' is not one of"),
    ({"feeds": [{"name": "a", "path": "missing.txt"}]}, "feed 'a' ("),
    ({"feeds": [{"name": "a", "path": "a.txt", "colour": "red"}]}, "unknown setting 'colour'"),
])
def test_bad_configurations_give_one_clear_error(tmp_path: Path, feeds: dict[str, Any], message: str) -> None:
    (tmp_path / "a.txt").write_text("203.0.113.50\n")
    config = tmp_path / "intel.yml"
    config.write_text(yaml.safe_dump(feeds))
    with pytest.raises(IntelConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        IntelFeeds(config)


def test_cli_refuses_a_broken_feed_before_writing_anything(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write_feeds(tmp_path, [{"name": "a", "path": "a.json", "format": "stix"}], {"a.json": "[1, 2"})
    assert main(["replay", str(CTU), "--out", str(tmp_path / "out"), "--intel", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"liaowang: error: {config}: feed 'a' ({tmp_path / 'a.json'}): not a stix feed: ")
    assert not (tmp_path / "out" / "flows.parquet").exists()


def test_matching_is_vectorized_over_large_feeds() -> None:
    """10,000 networks and 10,000 domains: one lookup per prefix length and label depth, not per indicator."""
    from detection.intel.indicators import Parsed
    from detection.intel.matcher import IntelMatcher
    from tests.conftest import decode_file

    feed = Parsed()
    for i in range(10_000):
        feed.add("ip", f"10.{i // 256}.{i % 256}.0/24", "high")
        feed.add("domain", f"host{i}.example", "low")
    feed.add("domain", "att.net", "low")
    matcher = IntelMatcher(feed.table("big"))
    assert len(matcher._networks) == 1  # one prefix length: one lookup per address column
    packets = decode_file(GTP_DNS)
    matched = matcher.match(packets)
    assert set(matched.column("intel_indicator").to_pylist()) >= {"att.net"}
