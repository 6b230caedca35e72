"""The console's REST API: every route's authorisation (401 signed out, 403 below its role, CSRF), sign-in
throttling, triage with audit, the hunt language, rule overrides that a replay applies, pcap download."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from console.app import create_app
from console.cli import main as cli
from console.hunt import HuntError, parse
from console.state import ConsoleState
from ingest.store import open_store
from ingest.store.api import Condition, Store
from sensors.capture.source import read_frames
from sensors.decode import decode
from tests.console_fixtures import PAYLOADS, ROBOT_TOKEN, client
from tests.intel_fixtures import C2_URL, FEEDS, MALICIOUS_JA3


@pytest.fixture(scope="module")
def app(console_store: tuple[Store, ConsoleState, Path]) -> Any:
    store, state, _ = console_store
    return create_app(store, state)


@pytest.fixture(scope="module")
def ids(app: Any) -> dict[str, Any]:
    c, _ = client(app, "viewer")
    alerts = c.get("/api/alerts", params={"limit": 200}).json()["rows"]
    with_flow = next(a for a in alerts if a.get("flow_id"))
    rule_id = c.get("/api/rules").json()[0]["id"]
    incidents = c.get("/api/incidents", params={"limit": 2}).json()["rows"]
    analyst, csrf = client(app, "analyst")
    case = analyst.post(f"/api/incidents/{incidents[1]['incident_id']}/case", headers=csrf).json()["case_id"]
    return {"alert": alerts[0]["alert_id"], "flow_alert": with_flow["alert_id"], "flow": with_flow["flow_id"],
            "rule": rule_id, "incident": incidents[0]["incident_id"], "case": case}


#: every API route and the least role it needs ("" = open)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/me", "viewer", None), ("POST", "/api/logout", "viewer", None),
    ("GET", "/api/extent", "viewer", None), ("GET", "/api/overview", "viewer", None),
    ("GET", "/api/alerts", "viewer", None), ("GET", "/api/alerts/groups", "viewer", None),
    ("GET", "/api/alerts/{alert}", "viewer", None), ("GET", "/api/alerts/{flow_alert}/pcap", "viewer", None),
    ("POST", "/api/alerts/triage", "analyst", {"alert_ids": ["{alert}"], "comment": "seen"}),
    ("GET", "/api/incidents", "viewer", None), ("GET", "/api/incidents/{incident}", "viewer", None),
    ("POST", "/api/incidents/{incident}/state", "analyst", {"state": "investigating"}),
    ("GET", "/api/cases", "viewer", None), ("POST", "/api/incidents/{incident}/case", "analyst", None),
    ("GET", "/api/cases/{case}", "viewer", None),
    ("POST", "/api/cases/{case}/notes", "analyst", {"text": "note {n}"}),
    ("POST", "/api/cases/{case}/assign", "analyst", {"assignee": "analyst"}),
    ("POST", "/api/cases/{case}/state", "analyst", {"state": "investigating"}),
    ("POST", "/api/cases/{case}/evidence", "analyst", {"kind": "flow", "ref": "{flow}"}),
    ("POST", "/api/cases/{case}/checks", "analyst", {"step": "triage/confirm", "done": True}),
    ("GET", "/api/notifications", "viewer", None), ("GET", "/api/notifications/settings", "viewer", None),
    ("GET", "/api/intel", "viewer", None),
    ("GET", "/api/reports/situation", "viewer", None), ("GET", "/api/reports/incident/{incident}", "viewer", None),
    ("POST", "/api/containment", "analyst", {"format": "stix", "incident_ids": ["{incident}"]}),
    ("GET", "/api/flows", "viewer", None), ("GET", "/api/flows/{flow}", "viewer", None),
    ("GET", "/api/flows/{flow}/pcap", "viewer", None), ("GET", "/api/hunt/fields", "viewer", None),
    ("GET", "/api/sessions", "viewer", None), ("GET", "/api/inventory", "viewer", None),
    ("GET", "/api/topology", "viewer", None), ("GET", "/api/assets", "viewer", None),
    ("GET", "/api/rules", "viewer", None), ("GET", "/api/rules/{rule}", "viewer", None),
    ("PATCH", "/api/rules/{rule}", "admin", {"window_s": 60}), ("GET", "/api/sensors", "viewer", None),
    ("GET", "/api/users", "admin", None), ("GET", "/api/audit", "admin", None),
    ("POST", "/api/users", "admin", {"username": "someone{n}", "password": "long-enough-pass", "role": "viewer"}),
    ("POST", "/api/admin/reidentify", "admin", {"case": "case-{n}", "key": "k", "identities": ["001010000000001"]}),
]
ORDER = ["viewer", "analyst", "admin"]


def test_every_api_route_is_classified(app: Any) -> None:
    served = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops
              } - {("POST", "/api/login"), ("GET", "/api/events")}
    listed = {(m, p.replace("{alert}", "{alert_id}").replace("{flow_alert}", "{alert_id}")
               .replace("{flow}", "{flow_id}").replace("{rule}", "{rule_id}")
               .replace("{incident}", "{incident_id}").replace("{case}", "{case_id}")) for m, p, _, _ in ROUTES}
    assert served == listed


@pytest.mark.parametrize("method,path,role,body", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_route_authorisation(app: Any, ids: dict[str, Any], method: str, path: str, role: str,
                             body: dict[str, Any] | None) -> None:
    url = path.format(**ids)
    anonymous, _ = client(app)
    assert anonymous.request(method, url, json=body).status_code == 401
    for n, user in enumerate(ORDER):
        c, csrf = client(app, user)
        payload = None if body is None else {k: (v.format(n=n, **ids) if isinstance(v, str) else
                                                 [x.format(**ids) for x in v] if isinstance(v, list) else v)
                                             for k, v in body.items()}
        if method != "GET":  # state-changing requests need the session's CSRF token
            assert c.request(method, url, json=payload).status_code == 403
        r = c.request(method, url, json=payload, headers=csrf)
        allowed = ORDER.index(user) >= ORDER.index(role)
        assert r.status_code == (200 if allowed else 403), (user, r.text)


def test_no_default_password_and_throttled_sign_in(tmp_path: Path,
                                                   console_store: tuple[Store, ConsoleState, Path]) -> None:
    state = ConsoleState(tmp_path)
    first = state.ensure_admin(None)
    assert first and len(first) >= 16 and state.verify("admin", first)
    assert state.ensure_admin(None) is None  # printed once only
    assert ConsoleState(tmp_path / "b").ensure_admin("from-the-environment") is None
    app = create_app(console_store[0], state)
    c = TestClient(app)
    codes = [c.post("/api/login", json={"username": "admin", "password": "wrong"}).status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    r = c.post("/api/login", json={"username": "admin", "password": first})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # even the right password waits
    cookie_app = create_app(console_store[0], ConsoleState(tmp_path / "c"))
    app_state: ConsoleState = cookie_app.state.ctx.state
    app_state.add_user("ana", "ana-password-1", "analyst")
    r = TestClient(cookie_app).post("/api/login", json={"username": "ana", "password": "ana-password-1"})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    log = [a["action"] for a in app_state.audit_log()[0]]
    assert log == ["login"]


def test_triage_is_stored_and_audited(app: Any, ids: dict[str, Any]) -> None:
    c, csrf = client(app, "analyst")
    r = c.post("/api/alerts/triage", headers=csrf, json={"alert_ids": [ids["alert"], "no-such-alert"],
                                                          "status": "investigating", "assignee": "analyst",
                                                          "comment": "checking the UPF"})
    assert r.json() == {"updated": [ids["alert"]], "missing": ["no-such-alert"]}
    detail = c.get(f"/api/alerts/{ids['alert']}").json()
    assert detail["alert"]["status"] == "investigating" and detail["alert"]["assignee"] == "analyst"
    assert detail["comments"][-1]["body"] == "checking the UPF"
    assert detail["audit"][0]["action"] == "triage" and detail["audit"][0]["username"] == "analyst"
    listed = c.get("/api/alerts", params={"status": "investigating"}).json()["rows"]
    assert ids["alert"] in {a["alert_id"] for a in listed}
    assert c.post("/api/alerts/triage", headers=csrf, json={"alert_ids": [ids["alert"]], "status": "bogus"}
                  ).status_code == 422


def test_alert_filters_and_groups(app: Any) -> None:
    c, _ = client(app, "viewer")
    red = c.get("/api/alerts", params={"level": "red", "limit": 500}).json()
    assert red["total"] > 0 and {a["level"] for a in red["rows"]} == {"red"}
    pfcp = c.get("/api/alerts", params={"technique": "FGT1498"}).json()["rows"]
    assert pfcp and all("fight.fgt1498" in a["tags"] for a in pfcp)
    inside = c.get("/api/alerts", params={"ip": "192.168.14.0/24"}).json()["rows"]
    assert inside and all("192.168.14." in (a["src_ip"] + a["dst_ip"]) for a in inside)
    groups = c.get("/api/alerts/groups", params={"by": "src_ip"}).json()
    assert sum(g["count"] for g in groups) == c.get("/api/alerts", params={"limit": 0}).json()["total"]
    assert c.get("/api/alerts", params={"sort": "nonsense"}).status_code == 422


def test_notifications_record_is_filtered_and_counted(app: Any) -> None:
    c, _ = client(app, "viewer")
    everything = c.get("/api/notifications", params={"limit": 500}).json()
    assert everything["total"] == len(everything["rows"]) == sum(everything["by_status"].values())
    assert everything["by_status"]["delivered"] >= 1 and everything["by_status"]["failed"] >= 1
    failed = c.get("/api/notifications", params={"status": "failed", "limit": 500}).json()
    assert failed["total"] == everything["by_status"]["failed"]
    assert {r["channel"] for r in failed["rows"]} == {"pager"} and all("cannot reach" in r["last_error"]
                                                                      for r in failed["rows"])
    delivered = [r for r in everything["rows"] if r["status"] == "delivered" and r["kind"] == "incident"]
    detail = c.get(f"/api/incidents/{delivered[0]['subject_id']}").json()
    assert [n["notification_id"] for n in detail["notifications"]] == [delivered[0]["notification_id"]]


def test_an_incident_shows_what_it_did_to_the_posture(app: Any) -> None:
    """The warning-level changes an incident's own alerts raised, and where those scopes stand now."""
    c, _ = client(app, "viewer")
    moved = 0
    for i in c.get("/api/incidents", params={"limit": 200}).json()["rows"]:
        d = c.get(f"/api/incidents/{i['incident_id']}").json()
        changes, now = d["posture"]["changes"], d["posture"]["scopes"]
        assert all(ch["alert_id"] in i["alert_ids"] for ch in changes)
        assert {s["scope"] for s in now} == {ch["scope"] for ch in changes}
        assert [ch["ts"] for ch in changes] == sorted(ch["ts"] for ch in changes)
        moved += bool(changes)
    assert moved >= 1


def test_notification_settings_show_who_is_told_without_the_keys(app: Any) -> None:
    """The routes the replay ran with, in file order, their channels with the key masked, and each channel's
    deliveries: the SOC webhook delivered, the pager (down) failed with its reason."""
    c, _ = client(app, "viewer")
    response = c.get("/api/notifications/settings")
    assert ROBOT_TOKEN not in response.text
    s = response.json()
    assert [r["route"] for r in s["routes"]] == ["incidents", "red-alerts", "trend"] and not s["errors"]
    assert s["routes"][1]["kinds"] == ["alert"] and s["routes"][1]["levels"] == ["red"]
    channels = {ch["name"]: ch for ch in s["channels"]}
    assert channels["soc"]["target"].endswith("/hook?access_token=***") and channels["soc"]["routes"] == ["incidents",
                                                                                                          "trend"]
    assert channels["soc"]["by_status"]["delivered"] >= 1 and channels["soc"]["last_error"] is None
    assert set(channels["pager"]["by_status"]) == {"failed"} and "cannot reach" in channels["pager"]["last_error"]["error"]
    assert s["loaded_at"] is not None


def test_overview_has_the_trend_forecast_and_its_warnings_were_notified(app: Any) -> None:
    c, _ = client(app, "viewer")
    o = c.get("/api/overview").json()
    series = {r["series"]: r for r in o["trend"]}
    assert {"alerts:all", "traffic:packets", "traffic:bytes"} <= set(series)
    assert series["alerts:all"]["threshold"] == 3 and series["traffic:bytes"]["threshold"] is None
    assert all(len(r["forecast"]) in (0, 15) and r["history"][-1] == r["observed"] for r in series.values())
    assert o["trend_warnings"] and {w["kind"] for w in o["trend_warnings"]} <= {"forecast", "crossed"}
    assert all(w["lead_s"] > 0 if w["kind"] == "forecast" else w["lead_s"] == 0 for w in o["trend_warnings"])
    # the fixture routes trend warnings to the SOC webhook (rate-limited with the incidents: some go in a digest);
    # a forecast is yellow, a crossing orange
    sent = [n for n in c.get("/api/notifications", params={"limit": 500}).json()["rows"] if n["kind"] == "trend"]
    warnings = {w["warning_id"]: w for w in o["trend_warnings"]}
    assert sent and {n["subject_id"] for n in sent} <= set(warnings)
    for n in sent:
        assert n["status"] in ("delivered", "digested") and n["title"] == warnings[n["subject_id"]]["reason"]
        assert n["level"] == {"forecast": "yellow", "crossed": "orange"}[warnings[n["subject_id"]]["kind"]]


def test_a_case_with_playbook_checklists_evidence_and_a_timeline(app: Any) -> None:
    """The PFCP story becomes a case: the triage checklist and the PFCP playbook's, evidence, notes, an assignee,
    its state moving the incident's; all audited, all on one timeline."""
    viewer, _ = client(app, "viewer")
    c, csrf = client(app, "analyst")
    pfcp = next(i for i in viewer.get("/api/incidents", params={"limit": 200}).json()["rows"]
                if any("PFCP request out of its node's sequence" in sig for st in i["stages"] for sig in st["signatures"]))
    opened = c.post(f"/api/incidents/{pfcp['incident_id']}/case", headers=csrf).json()
    case_id = opened["case_id"]
    assert opened["playbooks"][:2] == ["triage", "pfcp-attack"] and opened["assignee"] == "analyst"
    assert c.post(f"/api/incidents/{pfcp['incident_id']}/case", headers=csrf).json()["case_id"] == case_id  # one case
    assert viewer.get(f"/api/incidents/{pfcp['incident_id']}").json()["incident"]["state"] == "investigating"

    d = viewer.get(f"/api/cases/{case_id}").json()
    steps = {s["key"]: s for b in d["playbooks"] for s in b["steps"]}
    assert {"pfcp-attack/verify-association", "pfcp-attack/block-rogue-node", "pfcp-attack/audit-session-table"} <= set(steps)
    assert "SMF" in steps["pfcp-attack/verify-association"]["text"]["zh-CN"] and not steps["triage/confirm"]["done"]
    alert = d["alerts"][0]
    n4_flow = viewer.get("/api/flows", params={"q": f"ip={alert['src_ip']} dst_port=8805", "sort": "-bidirectional_packets",
                                               "limit": 1}).json()["rows"][0]

    def post(path: str, body: dict[str, Any]) -> Any:
        return c.post(f"/api/cases/{case_id}/{path}", json=body, headers=csrf)

    assert post("checks", {"step": "pfcp-attack/verify-association", "done": True}).status_code == 200
    assert post("checks", {"step": "ics/nothing", "done": True}).status_code == 422
    assert post("notes", {"text": "UPF 会话表已核对：SEID 0x9101 被删除"}).status_code == 200
    assert post("evidence", {"kind": "pcap", "ref": str(n4_flow["flow_id"]), "label": "N4"}).status_code == 200
    assert post("evidence", {"kind": "alert", "ref": alert["alert_id"]}).status_code == 200
    assert post("evidence", {"kind": "alert", "ref": "no-such-alert"}).status_code == 422
    assert post("evidence", {"kind": "flow", "ref": "12345678901234"}).status_code == 422
    assert post("assign", {"assignee": "viewer"}).status_code == 422  # a viewer cannot work a case
    assert post("assign", {"assignee": "admin"}).status_code == 200
    assert post("state", {"state": "contained", "comment": "rogue node blocked on N4"}).status_code == 200

    d = viewer.get(f"/api/cases/{case_id}").json()
    assert d["case"]["state"] == "contained" and d["case"]["assignee"] == "admin"
    assert d["incident"]["state"] == "contained"
    assert {s["key"] for b in d["playbooks"] for s in b["steps"] if s["done"]} == {"pfcp-attack/verify-association"}
    pcap = next(e for e in d["evidence"] if e["kind"] == "pcap")
    assert pcap["href"] == f"/api/flows/{n4_flow['flow_id']}/pcap" and "8805" in pcap["summary"]
    got = viewer.get(pcap["href"])
    assert got.content[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"), got.text  # a pcap
    line = d["timeline"]
    assert [e["ts"] for e in line] == sorted(e["ts"] for e in line)
    assert {e["source"] for e in line} >= {"detection", "analyst"}
    assert [e["kind"] for e in line if e["source"] == "analyst"] == ["opened", "check", "note", "evidence", "evidence",
                                                                     "assigned", "state"]
    assert any("SEID 0x9101" in e["text"] for e in line)
    assert any(e["kind"] == "stage" for e in line)
    listed = next(r for r in viewer.get("/api/cases").json()["rows"] if r["case_id"] == case_id)
    assert listed["steps_done"] == 1 and listed["level"] == pfcp["level"]
    assert listed["steps"] == sum(len(b["steps"]) for b in d["playbooks"]) >= 10
    admin, _ = client(app, "admin")
    actions = [a["action"] for a in admin.get("/api/audit", params={"limit": 500}).json()["rows"] if a["target"] == case_id]
    assert sorted(actions) == sorted(["case_open", "case_check", "case_note", "case_evidence", "case_evidence",
                                      "case_assigned", "case_state"])


def test_situational_and_incident_reports(app: Any, console_store: tuple[Store, ConsoleState, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The day's and week's situation in both languages, as HTML (charts inline, no script) and PDF; an incident's
    report carries its case's checklist and notes; downloads are audited; the CLI writes the same reports."""
    c, _ = client(app, "viewer")
    end = "2025-08-05T00:00:00Z"  # the day of the 5G attack captures
    r = c.get("/api/reports/situation", params={"period": "day", "end": end})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"].startswith("default-src 'none'") and "script" not in r.text
    html = r.text
    assert "网络安全态势日报" in html and "2025-08-04 08:00:00 — 2025-08-05 08:00:00 (Asia/Shanghai)" in html
    assert html.count("<svg") >= 4 and "PFCP request out of its node&#x27;s sequence" in html
    assert "192.168.130.174" in html and "红色" in html  # a top source; red alerts that day
    en = c.get("/api/reports/situation", params={"period": "week", "end": end, "lang": "en", "tz": "UTC"}).text
    assert "Weekly security situation report" in en and "2025-07-29 00:00:00 — 2025-08-05 00:00:00 (UTC)" in en
    pdf = c.get("/api/reports/situation", params={"period": "day", "end": end, "format": "pdf"})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-") and b"NotoSansCJK" in pdf.content
    assert "attachment" in pdf.headers["content-disposition"] and ".pdf" in pdf.headers["content-disposition"]
    assert c.get("/api/reports/situation", params={"period": "month"}).status_code == 422
    assert c.get("/api/reports/situation", params={"end": "yesterday"}).status_code == 422
    assert c.get("/api/reports/incident/inc-nope").status_code == 404

    analyst, csrf = client(app, "analyst")  # a case worked on (opening it again returns the same case)
    pfcp = next(i for i in c.get("/api/incidents", params={"limit": 200}).json()["rows"] if "PFCP" in str(i["stages"]))
    case = analyst.post(f"/api/incidents/{pfcp['incident_id']}/case", headers=csrf).json()
    for path, body in (("checks", {"step": "pfcp-attack/verify-association", "done": True}),
                       ("notes", {"text": "SEID 0x9101 restored"})):
        assert analyst.post(f"/api/cases/{case['case_id']}/{path}", json=body, headers=csrf).status_code == 200
    detail = c.get(f"/api/cases/{case['case_id']}").json()
    done = [s for b in detail["playbooks"] for s in b["steps"] if s["done"]]
    report = c.get(f"/api/reports/incident/{case['incident_id']}").text
    assert case["case_id"] in report and f"☑ {done[0]['text']['zh-CN']}" in report and "☐" in report
    assert "SEID 0x9101" in report and "处置建议" in report and "攻击阶段" in report
    admin, _ = client(app, "admin")
    audit = admin.get("/api/audit", params={"limit": 500}).json()["rows"]
    assert {"situation-day", "situation-week", case["incident_id"]} <= {a["target"] for a in audit if a["action"] == "report"}

    _, _, root = console_store
    out = tmp_path / "week.html"
    assert cli(["report", "situation", "--period", "week", "--end", end, "--lang", "en", "--tz", "UTC",
                "--store", str(root / "store"), "--out", str(out)]) == 0
    assert out.read_text().split("Generated")[0] == en.split("Generated")[0]  # the same report as the console's
    assert cli(["report", "incident", "inc-nope", "--store", str(root / "store")]) == 2
    assert capsys.readouterr().err.strip() == "liaowang: error: no incident inc-nope"


def test_intel_feeds_and_their_matches(app: Any) -> None:
    """The feeds the replay matched (tests/intel_fixtures.py), and the indicators they matched in the captures."""
    c, _ = client(app, "viewer")
    d = c.get("/api/intel").json()
    feeds = {f["feed"]: f for f in d["feeds"]}
    assert set(feeds) == set(FEEDS)
    assert feeds["misp-lab"]["by_type"] == {"domain": 2} and feeds["misp-lab"]["format"] == "misp"
    matched = {(m["feed"], m["indicator"], m["level"]) for m in d["matches"]}
    assert {("cti-stix", C2_URL, "orange"), ("ja3-blocklist", MALICIOUS_JA3, "red"),
            ("misp-lab", "att.net", "yellow"), ("misp-lab", "montimage.com", "yellow")} <= matched
    assert sum(d["by_level"].values()) == sum(m["alerts"] for m in d["matches"])
    # an intelligence alert names its feed and indicator where analysts read it
    alerts = c.get("/api/alerts", params={"detector": "intel", "text": C2_URL, "limit": 10}).json()["rows"]
    assert alerts and alerts[0]["detail"].startswith(f"cti-stix: url {C2_URL} (http_uri 45.9.74.78/c2sock)")


def test_containment_exports_block_actors_not_network_functions(app: Any, tmp_path: Path) -> None:
    c, headers = client(app, "analyst")
    incidents = c.get("/api/incidents", params={"limit": 500}).json()["rows"]
    roles = {r["ip"] for r in c.get("/api/inventory", params={"limit": 500}).json()["rows"]}
    hosts = [i for i in incidents if i["entities"][0].startswith("host:") and i["entities"][0][5:] not in roles]
    actor = hosts[0]["entities"][0].split(":", 1)[1]
    got = c.post("/api/containment", json={"format": "nftables", "incident_ids": [hosts[0]["incident_id"]]},
                 headers=headers)
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    assert f"elements = {{ {actor} }}" in got.text and hosts[0]["incident_id"] in got.text
    if shutil.which("nft"):  # the kernel's own parser, in check mode: nothing is applied
        (tmp_path / "c.nft").write_text(got.text)
        check = subprocess.run(["nft", "-c", "-f", str(tmp_path / "c.nft")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    # alerts whose source is a network function of the inventory (a spoofed SMF/UPF): withheld, with the reason
    alerts = c.get("/api/alerts", params={"limit": 500}).json()["rows"]
    spoofed = [a for a in alerts if (a.get("tunnel_src_ip") or a["src_ip"]) in roles]
    assert spoofed
    stix = c.post("/api/containment", json={"format": "stix", "alert_ids": [spoofed[0]["alert_id"]]}, headers=headers)
    bundle = stix.json()
    assert bundle["type"] == "bundle" and [o["type"] for o in bundle["objects"]] == ["identity"]
    rules = c.post("/api/containment", json={"format": "suricata", "alert_ids": [spoofed[0]["alert_id"]]},
                   headers=headers).text
    assert "not blocked: " + (spoofed[0].get("tunnel_src_ip") or spoofed[0]["src_ip"]) in rules
    assert "the operator's own network function" in rules and "drop ip" not in rules
    # a 5G incident lists its sessions' SEIDs/TEIDs for the core
    with_sessions = [a for a in alerts if a.get("session")]
    if with_sessions:
        core = c.post("/api/containment", json={"format": "core", "alert_ids": [with_sessions[0]["alert_id"]]},
                      headers=headers).text
        assert "kind,value,node,incident,reason" in core and ("seid," in core or "teid," in core)
    admin, admin_headers = client(app, "admin")
    log = admin.get("/api/audit", params={"limit": 50}).json()["rows"]
    exports = [e for e in log if e["action"] == "containment_export"]
    # newest first: every export of this test is there, by the analyst who made it
    assert [e["detail"]["format"] for e in exports[:4 if with_sessions else 3]] == \
        (["core"] if with_sessions else []) + ["suricata", "stix", "nftables"]
    assert {e["username"] for e in exports} == {"analyst"}
    assert any(e["detail"]["blocked"] == [actor] for e in exports)
    assert c.post("/api/containment", json={"format": "pdf", "alert_ids": ["x"]}, headers=headers).status_code == 422
    assert c.post("/api/containment", json={"format": "stix", "alert_ids": ["nope"]}, headers=headers).status_code == 404


def test_hunt_language(app: Any) -> None:
    h = parse('ip=10.45.0.0/16 dst_port=443,8443 sni~example proto=udp bytes>=100 "two words" teid=0x10')
    assert h.ip == "10.45.0.0/16" and h.text == "two words"
    assert [(w.field, w.op, w.value) for w in h.where] == [
        ("dst_port", "in", [443, 8443]), ("server_name", "contains", "example"), ("ip_proto", "eq", 17),
        ("bidirectional_bytes", "gte", 100), ("teid", "eq", 16)]
    assert parse("src_ip=10.0.0.0/8").where == [Condition("src_ip", "cidr", "10.0.0.0/8")]
    for bad in ("nosuch=1", "dst_port=http", 'sni="open', "ip=notanip"):
        with pytest.raises(HuntError):
            parse(bad)
    c, _ = client(app, "viewer")
    n3 = c.get("/api/flows", params={"q": "plane=N3 packets>2"}).json()
    assert n3["total"] > 0 and all(f["plane"] == "N3" and f["bidirectional_packets"] > 2 for f in n3["rows"])
    assert "no field" in c.get("/api/flows", params={"q": "bogus=1"}).json()["detail"]
    listed = c.get("/api/flows", params={"q": "plane=N3 packets>2", "fields": "src_ip, teid"}).json()
    assert listed["total"] == n3["total"] and listed["rows"] == [
        {"flow_id": f["flow_id"], "src_ip": f["src_ip"], "teid": f["teid"]} for f in n3["rows"]]
    assert "no column 'bogus'" in c.get("/api/flows", params={"fields": "bogus"}).json()["detail"]
    hostile = c.get("/api/flows", params={"q": "sni~evil.example"}).json()["rows"]
    assert {f["server_name"].split(".evil")[0] for f in hostile} == {p.replace(".", "_") for p in PAYLOADS}


def test_flow_pcap_is_the_flows_packets(app: Any, ids: dict[str, Any], tmp_path: Path) -> None:
    c, _ = client(app, "viewer")
    flow = c.get(f"/api/flows/{ids['flow']}").json()
    r = c.get(f"/api/alerts/{ids['flow_alert']}/pcap")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    path = tmp_path / "flow.pcap"
    path.write_bytes(r.content)
    packets = decode(next(read_frames(str(path))))
    assert packets.num_rows == flow["bidirectional_packets"]
    ends = {str(x) for x in packets["src_port"].to_pylist()} | {str(x) for x in packets["dst_port"].to_pylist()}
    assert {str(flow["src_port"]), str(flow["dst_port"])} == ends


def test_rule_overrides_reach_the_replay(tmp_path: Path) -> None:
    """An admin disables a rule in the console; the next `liaowang replay --store` of the same store skips it."""
    from tests.conftest import PCAPS

    store_dir = tmp_path / "store"
    capture = str(PCAPS / "zeek_ssh_sshguess.pcap")
    assert cli(["replay", capture, "--out", str(tmp_path / "a"), "--store", str(store_dir), "-q"]) == 0
    state = ConsoleState(store_dir / "console")
    state.add_user("boss", "boss-password-1", "admin")
    app = create_app(open_store(store_dir), state)
    c, csrf = client(app, "boss", "boss-password-1")
    alerts = c.get("/api/alerts", params={"limit": 100}).json()["rows"]
    brute = next(a for a in alerts if "brute force" in a["signature"])
    r = c.patch(f"/api/rules/{brute['rule_id']}", headers=csrf, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert cli(["replay", capture, "--out", str(tmp_path / "b"), "--store", str(store_dir), "-q"]) == 0
    import pyarrow.parquet as pq

    again = pq.read_table(tmp_path / "b" / "alerts.parquet")["rule_id"].to_pylist()
    assert brute["rule_id"] not in again and len(again) == len(alerts) - sum(a["rule_id"] == brute["rule_id"]
                                                                             for a in alerts)


def test_user_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert cli(["user", "add", "lin", "--role", "viewer", "--store", str(tmp_path), "--password-stdin"]) == 0
    monkeypatch.setenv("LIAOWANG_USER_PASSWORD", "short")
    assert cli(["user", "add", "wu", "--store", str(tmp_path)]) == 2
    assert "at least 10" in capsys.readouterr().err
    assert cli(["user", "list", "--store", str(tmp_path)]) == 0
    assert "lin" in capsys.readouterr().out
    assert ConsoleState(tmp_path / "console").verify("lin", "a-long-password")


def test_security_headers_and_openapi(app: Any) -> None:
    c = TestClient(app)
    r = c.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    spec = c.get("/openapi.json").json()
    assert {"/api/overview", "/api/alerts", "/api/flows", "/api/sessions", "/api/assets", "/api/rules",
            "/api/sensors"} <= set(spec["paths"])
