"""Notifications against real local receivers (tests/receivers.py): an HTTP server standing in for a webhook
and for WeCom/DingTalk/Feishu robots (their formats and signatures checked), syslog over UDP and TCP (RFC 5424 +
CEF), SMTP with STARTTLS (aiosmtpd).  Delivery, retry after an outage, dedup, the rate limit's digest and
escalation of unacknowledged incidents; and a replay of the multi-stage scenario that notifies its incidents."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from console.cli import main
from ingest.notify import Notifier, NotifyConfigError, parse_config
from ingest.notify.channels import cef
from ingest.notify.message import alert_message
from ingest.notify.settings import settings_table
from ingest.replay import replay
from ingest.store import open_store
from sensors.generate.scenarios import multi_stage
from tests.receivers import HttpReceiver, SmtpReceiver, SyslogReceiver, free_port, wait_for
from tests.tls_fixtures import self_signed


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pa.Table, Path]:
    """The multi-stage scenario's alerts and incidents (a red intrusion story among others), and its capture."""
    tmp = tmp_path_factory.mktemp("notify-scenario")
    pcap = multi_stage(tmp / "multi_stage.pcap")
    replay([str(pcap)], tmp / "out", processes=1)
    return pq.read_table(tmp / "out" / "alerts.parquet"), pq.read_table(tmp / "out" / "incidents.parquet"), pcap


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


LAB = ["10.0.0.0/24"]  # the intrusion story's network (its actor and targets)


def settings(**overrides: Any) -> dict[str, Any]:
    return {"retry_s": 0.2, "retry_max_s": 0.5, **overrides}


def test_incidents_reach_webhook_and_group_robots_in_their_formats(scenario: Any, http: HttpReceiver) -> None:
    alerts, incidents, _ = scenario
    config = parse_config(settings(
        channels={"soc": {"type": "webhook", "url": http.url("/soc"), "language": "en"},
                  "wecom": {"type": "wecom", "url": http.url("/wecom")},
                  "ding": {"type": "dingtalk", "url": http.url("/ding?access_token=t0k"), "secret": "SECding"},
                  "feishu": {"type": "feishu", "url": http.url("/feishu"), "secret": "fs-secret"}},
        routes=[{"name": "red", "kinds": ["incident"], "levels": ["red"], "channels": ["soc", "wecom", "ding", "feishu"]}]))
    notifier = Notifier(config)
    notifier.offer(alerts, incidents)
    red = {r["incident_id"]: r for r in incidents.select(["incident_id", "level", "title", "merged_into"]).to_pylist()
           if r["level"] == "red" and not r["merged_into"]}
    assert len(red) == 2, "the scenario's red stories: the intrusion and the N4 attack"
    wait_for(lambda: len(http.received) >= 4 * len(red))
    notifier.close()
    assert {r.body["id"] for r in http.at("/soc")} == set(red)
    (soc,) = [r for r in http.at("/soc") if "10.0.0.66" in r.body["title"]]
    assert soc.body["kind"] == "incident" and soc.body["level"] == "red"
    assert soc.body["title"] == red[soc.body["id"]]["title"]
    assert soc.body["tactics"] == ["discovery", "credential_access", "command_and_control", "exfiltration"]
    wecom = http.at("/wecom")[0]
    assert wecom.body["msgtype"] == "markdown" and "红色预警" in wecom.body["markdown"]["content"]
    ding = http.at("/ding")[0]
    ts = ding.query["timestamp"]
    expected = base64.b64encode(hmac.new(b"SECding", f"{ts}\nSECding".encode(), hashlib.sha256).digest()).decode()
    assert ding.query["sign"] == expected and ding.query["access_token"] == "t0k"
    assert ding.body["msgtype"] == "markdown" and ding.body["markdown"]["text"].startswith("### 【瞭望 红色预警】事件")
    feishu = http.at("/feishu")[0]
    key = f"{feishu.body['timestamp']}\nfs-secret".encode()
    assert feishu.body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu.body["msg_type"] == "text" and "事件" in feishu.body["content"]["text"]
    rows = notifier.table().to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"delivered"}
    assert all(r["attempts"] == 1 and r["latency_ms"] is not None for r in rows)


def test_a_robot_refusing_is_a_failure_with_its_reason(scenario: Any, http: HttpReceiver) -> None:
    alerts, incidents, _ = scenario
    http.answer = lambda path, body: (200, {"errcode": 310000, "errmsg": "sign not match"})
    config = parse_config(settings(attempts=2, channels={"ding": {"type": "dingtalk", "url": http.url("/ding")}},
                                   routes=[{"kinds": ["incident"], "levels": ["red"], "channels": ["ding"], "assets": LAB}]))
    notifier = Notifier(config)
    notifier.offer(alerts, incidents)
    wait_for(lambda: [r for r in notifier.table().to_pylist() if r["status"] == "failed"])
    notifier.close()
    (row,) = notifier.table().to_pylist()
    assert row["attempts"] == 2 and "sign not match" in row["last_error"] and row["delivered_at"] is None


def test_delivery_is_retried_after_the_receiver_comes_back(scenario: Any) -> None:
    alerts, incidents, _ = scenario
    port = free_port()  # nothing listens here yet: the receiver is down
    config = parse_config(settings(attempts=10, channels={"soc": {"type": "webhook", "url": f"http://127.0.0.1:{port}/h"}},
                                   routes=[{"kinds": ["incident"], "levels": ["red"], "channels": ["soc"], "assets": LAB}]))
    notifier = Notifier(config)
    notifier.offer(alerts, incidents)
    wait_for(lambda: [r for r in notifier.table().to_pylist() if r["status"] == "retrying"])
    receiver = HttpReceiver(port=port)
    try:
        wait_for(lambda: receiver.received)
        notifier.close()
        (row,) = notifier.table().to_pylist()
        assert row["status"] == "delivered" and row["attempts"] >= 2
        assert len(receiver.received) == 1
    finally:
        receiver.close()


def test_repeats_are_deduplicated_and_a_burst_becomes_a_digest(scenario: Any, http: HttpReceiver) -> None:
    alerts, incidents, _ = scenario
    config = parse_config(settings(rate_per_minute=8, channels={"soc": {"type": "webhook", "url": http.url()}},
                                   routes=[{"kinds": ["alert"], "levels": ["red", "orange", "yellow", "blue"],
                                            "channels": ["soc"]}]))
    notifier = Notifier(config)
    # a flood's worth of distinct alerts: the scenario's, renamed 300 times over
    many = pa.concat_tables([alerts.set_column(0, "alert_id", pa.array([f"{i}-{a}" for a in alerts["alert_id"].to_pylist()]))
                             .set_column(alerts.schema.get_field_index("group"), "group",
                                         pa.array([f"{g}|{i}" for g in alerts["group"].to_pylist()]))
                             for i in range(300)])
    notifier.offer(many, None)
    notifier.offer(many, None)  # re-delivered: nothing new
    wait_for(lambda: any(r.body["kind"] == "digest" for r in http.received))
    notifier.close()
    burst = 2  # a quarter of 8 per minute; the test takes seconds, so the bucket refills once at most
    singles = [r for r in http.received if r.body["kind"] == "alert"]
    digests = [r for r in http.received if r.body["kind"] == "digest"]
    assert len(http.received) <= burst + 1, "900 alerts cost the channel a burst and a digest, not 900 messages"
    assert len(singles) + sum(len(d.body["covers"]) for d in digests) == many.num_rows  # each one told, once
    assert notifier.counts["deduplicated"] == many.num_rows
    statuses = [r["status"] for r in notifier.table().to_pylist()]
    assert statuses.count("digested") == many.num_rows - len(singles)
    assert statuses.count("delivered") == len(http.received)


def test_unacknowledged_red_incident_escalates_and_an_acknowledged_one_does_not(scenario: Any,
                                                                                  http: HttpReceiver) -> None:
    alerts, incidents, _ = scenario
    config = parse_config(settings(
        channels={"soc": {"type": "webhook", "url": http.url("/soc")}, "duty": {"type": "webhook", "url": http.url("/duty")},
                  "chief": {"type": "webhook", "url": http.url("/chief")}},
        routes=[{"kinds": ["incident"], "levels": ["red", "orange"], "channels": ["soc"],
                 "escalate": [{"after_min": 0.01, "channels": ["duty"]}, {"after_min": 0.03, "channels": ["chief"]}]}]))
    acked: set[str] = set()
    notifier = Notifier(config, acknowledged=lambda ids: acked & set(ids))
    notifier.offer(alerts, incidents)
    wait_for(lambda: len(http.at("/chief")) == 2, timeout_s=15)  # both red stories
    notifier.close()
    soc_ids, escalated = {r.body["id"] for r in http.at("/soc")}, http.at("/chief")
    assert {r.body["id"] for r in http.at("/duty")} == soc_ids == {r.body["id"] for r in escalated}
    assert all(r.body["kind"] == "escalation" for r in http.at("/duty") + escalated)

    http.received.clear()
    acked.update(soc_ids)  # analysts took them up before the first step was due
    notifier = Notifier(config, acknowledged=lambda ids: acked & set(ids))
    notifier.offer(alerts, incidents)
    wait_for(lambda: http.at("/soc"))
    time.sleep(2.5)
    notifier.close()
    assert not http.at("/duty") and not http.at("/chief")


def test_syslog_carries_cef_over_udp_and_tcp(scenario: Any) -> None:
    alerts, incidents, _ = scenario
    receiver = SyslogReceiver()
    try:
        config = parse_config(settings(
            channels={"udp": {"type": "syslog", "host": "127.0.0.1", "port": receiver.udp_port},
                      "tcp": {"type": "syslog", "host": "127.0.0.1", "port": receiver.tcp_port, "protocol": "tcp"}},
            routes=[{"kinds": ["alert"], "levels": ["red"], "channels": ["udp", "tcp"]}]))
        notifier = Notifier(config)
        notifier.offer(alerts, None)
        wait_for(lambda: len(receiver.messages) >= 2)
        notifier.close()
        red = alerts.filter(pa.compute.equal(alerts["level"], "red"))
        assert {t for t, _ in receiver.messages} == {"udp", "tcp"} and len(receiver.messages) == 2 * red.num_rows
        for _, record in receiver.messages:
            head, _, body = record.partition(b"\xef\xbb\xbf")
            assert head.startswith(b"<162>1 ") and b" liaowang - alert - " in head  # local4.crit
            text = body.decode()
            assert text.startswith("CEF:0|Liaowang|Liaowang|") and "|10|" in text and "cs1=red" in text
    finally:
        receiver.close()


def test_cef_escapes_its_separators() -> None:
    row = {"alert_id": "a1", "level": "orange", "signature": "odd|name", "score": 80.0, "first_seen": 1, "last_seen": 2,
           "signature_id": 9, "category": "a=b", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2"}
    record = cef(alert_message(row))
    assert record.split("|")[:5] == ["CEF:0", "Liaowang", "Liaowang", record.split("|")[3], "9"]
    assert "odd\\|name" in record and "cat=a\\=b" in record and "\n" not in record


def test_email_goes_over_starttls(scenario: Any, tmp_path: Path) -> None:
    alerts, incidents, _ = scenario
    cert, key = self_signed(tmp_path)
    smtp = SmtpReceiver(cert, key)
    try:
        config = parse_config(settings(
            channels={"mail": {"type": "email", "host": "127.0.0.1", "port": smtp.port, "from": "liaowang@soc.example",
                               "to": ["duty@soc.example"], "ca_file": str(cert)}},
            routes=[{"kinds": ["incident"], "levels": ["red"], "channels": ["mail"], "assets": LAB}]))
        notifier = Notifier(config)
        notifier.offer(alerts, incidents)
        wait_for(lambda: smtp.messages)
        notifier.close()
        ((mail, tls),) = smtp.messages
        assert tls, "the message was sent inside STARTTLS"
        assert mail["Subject"].startswith("【瞭望 红色预警】事件") and mail["To"] == "duty@soc.example"
        assert "10.0.0.66" in mail.get_content()
    finally:
        smtp.close()


def test_an_untrusted_mail_server_is_refused(scenario: Any, tmp_path: Path) -> None:
    alerts, incidents, _ = scenario
    cert, key = self_signed(tmp_path)
    smtp = SmtpReceiver(cert, key)
    try:  # no ca_file: the system's CAs do not vouch for the test certificate
        config = parse_config(settings(attempts=1, channels={"mail": {
            "type": "email", "host": "127.0.0.1", "port": smtp.port, "from": "a@b.example", "to": ["c@d.example"]}},
            routes=[{"kinds": ["incident"], "levels": ["red"], "channels": ["mail"], "assets": LAB}]))
        notifier = Notifier(config)
        notifier.offer(alerts, incidents)
        (row,) = wait_for(lambda: [r for r in notifier.table().to_pylist() if r["status"] == "failed"])
        notifier.close()
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"] and not smtp.messages
    finally:
        smtp.close()


def test_settings_file_is_reloaded_when_it_changes(scenario: Any, http: HttpReceiver, tmp_path: Path) -> None:
    alerts, incidents, _ = scenario
    path = tmp_path / "notify.yml"
    channels = {"soc": {"type": "webhook", "url": http.url()}}
    path.write_text(yaml.safe_dump({"channels": channels, "routes": [{"kinds": ["alert"], "levels": ["red"],
                                                                      "channels": ["soc"]}]}))
    notifier = Notifier(path)
    notifier.offer(None, incidents)  # incidents are not routed yet
    first = notifier.settings()
    time.sleep(1.2)
    path.write_text(yaml.safe_dump({"channels": channels, "routes": [{"kinds": ["incident"], "levels": ["red"],
                                                                      "channels": ["soc"]}]}))
    time.sleep(1.2)
    notifier.offer(None, incidents)  # now they are
    wait_for(lambda: len(http.received) == 2)
    second = notifier.settings()
    path.write_text("routes: [")  # a broken edit: the settings that worked stay
    time.sleep(1.2)
    notifier.offer(alerts, None)
    time.sleep(0.5)
    notifier.close()
    assert [r.body["kind"] for r in http.received] == ["incident", "incident"]
    # what the console shows: each version of the file, and the failed edit beside the settings still in force
    broken = notifier.settings()
    assert first.column("kinds").to_pylist() == [["alert"]] and second.column("kinds").to_pylist() == [["incident"]]
    assert second.column("file_mtime")[0].value > first.column("file_mtime")[0].value
    assert broken.column("kinds").to_pylist() == [["incident"]] and "not valid YAML" in broken.column("error")[0].as_py()
    assert notifier.settings_version == 2


def test_settings_show_targets_without_their_keys() -> None:
    config = parse_config({
        "channels": {
            "dt": {"type": "dingtalk", "url": "https://oapi.dingtalk.com/robot/send?access_token=abcdef0123456789",
                   "secret": "SECdeadbeef"},
            "fs": {"type": "feishu", "url": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"},
            "hook": {"type": "webhook", "url": "https://ops:hunter2@soc.example:8443/liaowang/in"},
            "siem": {"type": "syslog", "host": "10.0.0.5", "port": 6514, "protocol": "tcp"},
            "mail": {"type": "email", "host": "smtp.example.com", "from": "lw@example.com", "to": ["duty@example.com"],
                     "password": "p4ssw0rd"}},
        "routes": [{"name": "red", "channels": ["dt", "hook"], "escalate": [{"after_min": 15, "channels": ["mail"]}]},
                   {"name": "all", "kinds": ["alert"], "levels": ["yellow"], "channels": ["fs", "siem"]}]})
    table = settings_table(config, "notify.yml")
    text = json.dumps(table.to_pylist(), default=str)
    for secret in ("abcdef0123456789", "SECdeadbeef", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "hunter2", "p4ssw0rd"):
        assert secret not in text
    red, every = table.to_pylist()
    assert [(c["name"], c["target"], c["signed"]) for c in red["channels"]] == [
        ("dt", "https://oapi.dingtalk.com/robot/send?access_token=***", True),
        ("hook", "https://soc.example:8443/liaowang/in", None),
        ("mail", "smtp://smtp.example.com:587 lw@example.com → duty@example.com", None)]
    assert red["notify"] == ["dt", "hook"] and red["escalate"] == [{"after_min": 15.0, "channels": ["mail"]}]
    assert [c["target"] for c in every["channels"]] == ["https://open.feishu.cn/open-apis/bot/v2/hook/***",
                                                        "tcp://10.0.0.5:6514"]
    assert every["categories"] == [] and every["position"] == 1


@pytest.mark.parametrize(("raw", "message"), [
    ({"channels": {"a": {"type": "pager", "url": "http://x"}}}, "channels.a.type: 'pager' is not one of"),
    ({"channels": {"a": {"type": "webhook", "url": "ftp://x"}}}, "channels.a.url: an http:// or https:// URL"),
    ({"channels": {"a": {"type": "webhook", "url": "http://x"}}, "routes": [{"channels": ["b"]}]},
     "routes[0].channels: unknown 'b'"),
    ({"channels": {"a": {"type": "webhook", "url": "http://x/${LIAOWANG_TEST_UNSET}"}}},
     "environment variable LIAOWANG_TEST_UNSET is not set"),
    ({"channels": {"a": {"type": "webhook", "url": "http://x"}}, "routes": [{"channels": ["a"], "assets": ["core"]}]},
     "'core' is neither an asset group nor an address or CIDR"),
    ({"channels": {"a": {"type": "webhook", "url": "http://x"}},
      "routes": [{"name": "r", "channels": ["a"]}, {"name": "r", "channels": ["a"]}]},
     "routes[1].name: 'r' names an earlier route too"),
])
def test_bad_settings_are_named(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(NotifyConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")
                       .replace("$", r"\$").replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        parse_config(raw, "notify.yml")


def test_replay_notifies_and_records_deliveries(scenario: Any, http: HttpReceiver, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _, _, pcap = scenario
    path = tmp_path / "notify.yml"
    path.write_text(yaml.safe_dump({"channels": {"soc": {"type": "webhook", "url": http.url()}},
                                    "asset_groups": {"lab": ["10.0.0.0/24"]},
                                    "routes": [{"kinds": ["incident"], "levels": ["red"], "assets": ["lab"],
                                                "channels": ["soc"]}]}))
    out, store = tmp_path / "out", tmp_path / "store"
    assert main(["replay", str(pcap), "--out", str(out), "--notify", str(path), "--store", str(store), "--processes", "1"]) == 0
    assert "notifications" in capsys.readouterr().out
    (received,) = http.received
    assert "10.0.0.66" in received.body["title"]
    log = [json.loads(line) for line in (out / "notifications.jsonl").read_text().splitlines()]
    assert [r["status"] for r in log] == ["queued", "delivered"]
    with open_store(store) as s:
        from ingest.store import Query
        (row,) = s.search(Query("notifications")).rows
    assert row["status"] == "delivered" and row["subject_id"] == received.body["id"]

    bad = tmp_path / "bad.yml"
    bad.write_text("channels: {a: {type: webhook}}")
    assert main(["replay", str(pcap), "--out", str(tmp_path / "out2"), "--notify", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"liaowang: error: {bad}.channels.a.url: an http:// or https:// URL is required"]
