"""The console as analysts use it, in a real headless Chromium (Debian's, driven by Playwright): sign in, the
overview's charts, filtering and triaging alerts with the audit trail, downloading a flow's packets, switching
language, a viewer who cannot triage, and hostile strings from the wire shown as text.  Screenshots of every page
go to tests/artifacts/console/ (look at them)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from console.state import ConsoleState
from ingest.store.api import Store
from sensors.capture.source import read_frames
from sensors.decode import decode
from tests.console_fixtures import PASSWORDS, PAYLOADS, ROBOT_TOKEN, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHARTS = ["posture-gauge", "traffic", "alerts-levels", "posture-trend", "planes", "apps", "targets", "sources", "graph"]


@pytest.fixture(scope="module")
def url(console_store: tuple[Store, ConsoleState, Path]) -> Iterator[str]:
    store, state, _ = console_store
    base, server = serve_in_thread(store, state)
    yield base
    server.should_exit = True


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = subprocess.run(["bash", str(ROOT / "scripts" / "chromium.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Session:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def shot(self, name: str) -> None:
        self.page.wait_for_timeout(300)  # chart animations
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(browser: Browser, url: str, user: str, locale: str = "zh-CN") -> Session:
    # bypass_csp: Playwright's waits evaluate strings, which the console's CSP forbids; it also means the hostile
    # strings test proves the rendering safe on its own, without the CSP's help (the API tests check the CSP)
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, locale=locale,
                                  timezone_id="Asia/Shanghai", accept_downloads=True, bypass_csp=True)
    s = Session(context.new_page())
    s.page.goto(url)
    s.page.fill("#username", user)
    s.page.fill("#password", PASSWORDS[user])
    s.page.click("#login")
    s.page.wait_for_selector("#warning-level")
    return s


def series_points(page: Page, chart_id: str) -> int:
    return int(page.evaluate("""id => {
        const c = echarts.getInstanceByDom(document.getElementById(id));
        return c.getOption().series.reduce((n, s) => n + (s.data || []).filter(v => (v && v.value !== undefined
                   ? v.value : v) !== 0).length + (s.links || []).length, 0);
    }""", chart_id))


def test_overview_shows_the_replay(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "admin")
    page = s.page
    assert page.text_content("#warning-level") and "红色预警" in (page.text_content("#warning-level") or "")
    for chart_id in CHARTS:
        assert series_points(page, chart_id) > 0, chart_id
    assert page.locator("#recent tbody tr").count() == 10
    # the tracked posture: level changes with their reasons (the captures' alerts have all aged out since, so
    # no scope is under a warning now: the scopes card says so)
    changes = page.inner_text("#level-changes")
    assert "network" in changes and "score " in changes and ("alerts aged" in changes or ">=" in changes)
    assert page.locator("#posture-scopes tbody tr").count() == 0
    # the trend forecast: a chart of the chosen series with its forecast, and the warnings it raised
    assert series_points(page, "trend-chart") > 0
    assert page.locator("#trend-warnings tbody tr").count() >= 1 and "已越限" in page.inner_text("#trend-warnings")
    page.select_option("#trend-series", "traffic:bytes")
    assert series_points(page, "trend-chart") > 0
    s.shot("overview-zh")
    assert not s.errors


def test_filter_open_triage_and_audit(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "analyst")
    page = s.page
    page.goto(url + "#/alerts")
    page.select_option("select[name=level]", "orange")
    page.click("#apply-filters")
    page.wait_for_function("location.hash.includes('level=orange')")
    page.wait_for_selector("a.alert-link")
    levels = page.locator("tbody .pill").all_text_contents()
    assert levels and set(levels) == {"橙色"}
    s.shot("alerts-filtered")
    page.locator("a.alert-link").first.click()
    page.wait_for_selector("#alert-title")
    page.select_option("#detail-status", "false_positive")
    page.fill("#detail-comment", "benign: lab heartbeat storm")
    page.click("#detail-save")
    page.wait_for_function("document.querySelector('#detail-result').textContent.length > 0")
    page.wait_for_selector("text=benign: lab heartbeat storm")
    audit = page.locator("table").filter(has_text="triage").first.text_content() or ""
    assert "analyst" in audit and "false_positive" in audit
    s.shot("alert-detail-triaged")
    assert not s.errors


def test_download_a_flows_packets(browser: Browser, url: str, tmp_path: Path) -> None:
    s = sign_in(browser, url, "viewer")
    page = s.page
    ids = page.evaluate("""async () => (await (await fetch('/api/alerts?limit=200')).json()).rows
                             .filter(a => a.flow_id).map(a => [a.alert_id, a.flow_id])""")
    alert_id, flow_id = ids[0]
    page.goto(f"{url}#/alert/{alert_id}")
    with page.expect_download() as info:
        page.click("#download-pcap")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    packets = decode(next(read_frames(str(path))))
    flow = page.evaluate(f"async () => (await fetch('/api/flows/{flow_id}')).json()")
    assert packets.num_rows == flow["bidirectional_packets"] > 0


def test_switch_language(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "viewer")
    page = s.page
    assert page.text_content("nav a[data-page=overview]") == "态势总览"
    page.click("#lang")
    page.wait_for_function("document.querySelector('nav a[data-page=overview]').textContent === 'Overview'")
    assert "warning" in (page.text_content("#warning-level") or "").lower()
    s.shot("overview-en")
    page.click("#lang")
    page.wait_for_function("document.querySelector('nav a[data-page=overview]').textContent === '态势总览'")


def test_a_viewer_cannot_triage(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "viewer")
    page = s.page
    page.goto(url + "#/alerts")
    page.wait_for_selector("a.alert-link")
    assert page.is_disabled("#bulk-apply") and page.is_disabled("input.pick >> nth=0")
    page.locator("a.alert-link").first.click()
    page.wait_for_selector("#alert-title")
    assert page.is_disabled("#detail-save")
    status = page.evaluate("""async () => {
        const me = await (await fetch('/api/me')).json();
        const r = await fetch('/api/alerts/triage', {method: 'POST', headers: {'Content-Type': 'application/json',
                  'X-CSRF-Token': me.csrf}, body: JSON.stringify({alert_ids: ['x'], status: 'resolved'})});
        return r.status; }""")
    assert status == 403
    assert "audit" not in page.locator("nav").text_content()  # type: ignore[operator]


def test_hostile_strings_are_shown_as_text(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "analyst", locale="en-US")
    page = s.page
    page.goto(url + "#/hunt?q=" + "ip=10.66.0.0/16")
    page.wait_for_selector("#hunt-query")
    page.wait_for_selector("text=.evil.example")
    body = page.text_content("main") or ""
    assert PAYLOADS[0] in body  # an HTTP Host header, verbatim, as text
    for payload in PAYLOADS:
        assert payload.replace(".", "_") in body  # DNS names
    alert_ids: list[Any] = page.evaluate("""async () => (await (await fetch('/api/alerts?ip=10.66.0.0/16')).json())
                                            .rows.map(a => a.alert_id)""")
    for alert_id in alert_ids:
        page.goto(f"{url}#/alert/{alert_id}")
        page.wait_for_selector("#alert-title")
    page.goto(url + "#/assets")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0 and not s.dialogs and not s.errors
    page.goto(url + "#/hunt?q=" + "ip=10.66.0.0/16")
    page.wait_for_selector("text=.evil.example")
    s.shot("hunt-hostile-names")


@pytest.mark.parametrize("page_name", ["incidents", "alerts", "hunt", "fiveg", "assets", "rules", "intel", "sensors",
                                       "notifications", "audit"])
def test_every_page_renders(browser: Browser, url: str, page_name: str) -> None:
    s = sign_in(browser, url, "admin")
    s.page.goto(f"{url}#/{page_name}")
    s.page.wait_for_selector("main table")
    if page_name == "fiveg":
        assert series_points(s.page, "topology") > 0
    s.shot(page_name)
    assert not s.errors


def test_lawful_reidentification_form(browser: Browser, url: str,
                                      console_store: tuple[Store, ConsoleState, Path]) -> None:
    """An admin turns a warrant's IMSI into its pseudonym and hunts its flows; the key leaves the form; the audit
    log names the case, never the IMSI."""
    import os

    from ingest.privacy import KEY_ENV, KEY_FILE, Pseudonymizer

    _, _, root = console_store
    key = os.environ.get(KEY_ENV) or (root / "replay" / KEY_FILE).read_text().strip()
    imsi = "999700000000001"  # a UE of the bundled 5G core captures
    s = sign_in(browser, url, "admin", locale="en-US")
    page = s.page
    page.goto(url + "#/audit")
    page.fill("#reid-case", "warrant-2026-0042")
    page.fill("#reid-key", key)
    page.fill("#reid-ids", f"{imsi}\n001019999999999")
    page.click("#reid-go")
    page.wait_for_selector("#reid-result table")
    pseudonym = Pseudonymizer(key.encode()).subscriber(imsi, "imsi")
    row = page.locator(f"#reid-result tr[data-id='{pseudonym}']")
    assert imsi in (row.text_content() or "") and "Hunt its flows" in (row.text_content() or "")
    assert "Found: 1 / 2" in (page.locator("#reid-result p").text_content() or "")
    assert page.input_value("#reid-key") == ""
    page.wait_for_selector("#audit-log td:text('reidentify')")
    log = page.locator("#audit-log").text_content() or ""
    assert "warrant-2026-0042" in log and pseudonym in log and imsi not in log and key not in log
    s.shot("reidentify")
    row.locator("a").click()
    page.wait_for_function("location.hash.startsWith('#/hunt')")
    assert page.input_value("#hunt-query") == f"subscriber={pseudonym}"
    assert not s.errors


def test_incidents_page_tells_the_story(browser: Browser, url: str) -> None:
    """The incidents list, an incident's stages in order with its alerts, and an analyst moving it (audited)."""
    s = sign_in(browser, url, "analyst", locale="en-US")
    page = s.page
    page.goto(url + "#/incidents")
    page.wait_for_selector("a.incident-link")
    assert page.locator("tbody tr").count() >= 1
    s.shot("incidents")
    page.locator("a.incident-link").first.click()
    page.wait_for_selector("#incident-title")
    stages = page.locator("#app ol.stages").first.locator("li b").all_text_contents()
    assert stages and all(stage for stage in stages)
    assert series_points(page, "incident-timeline") == len(stages)
    assert page.locator("a[href^='#/alert/']").count() >= 1
    # an incident whose alerts moved a scope's warning level shows the change and where the scope stands
    rows = page.request.get(url + "/api/incidents?limit=200").json()["rows"]
    moved = next(i["incident_id"] for i in rows
                 if page.request.get(f"{url}/api/incidents/{i['incident_id']}").json()["posture"]["changes"])
    page.goto(f"{url}#/incident/{moved}")
    page.wait_for_selector("#incident-posture tbody tr")
    posture = page.inner_text("#incident-posture")
    assert "→" in posture and "Where those scopes stand now" in posture
    s.shot("incident-posture")
    page.select_option("#containment-format", "nftables")
    with page.expect_download() as download:
        page.click("#containment-export")
    script = Path(download.value.path()).read_text()
    assert script.startswith("#!/usr/sbin/nft -f") and "table inet liaowang_containment" in script
    page.select_option("#incident-state", "investigating")
    page.fill("#incident-comment", "owner: NOC shift B")
    page.click("#incident-save")
    page.wait_for_selector("text=owner: NOC shift B")
    assert page.input_value("#incident-state") == "investigating"
    s.shot("incident-detail")
    assert not s.errors


def test_a_case_from_an_incident_and_the_reports(browser: Browser, url: str) -> None:
    """An analyst opens a case from an incident, ticks a playbook step and writes a note (the timeline shows both);
    the incident's report and the week's situational report open in the browser, the PDF downloads."""
    s = sign_in(browser, url, "analyst", locale="zh-CN")
    page = s.page
    page.goto(url + "#/incidents?level=red")
    page.wait_for_selector("a.incident-link")
    page.locator("a.incident-link").first.click()
    page.wait_for_selector("#incident-title")
    page.click("#open-case" if page.locator("#open-case").count() else "#incident-case")
    page.wait_for_selector("#case-title")
    assert page.locator("#case-checklists .playbook").count() >= 2  # the triage list and the attack's own
    box = page.locator("#case-checklists input[type=checkbox]").first
    step = box.get_attribute("data-step")
    box.check()
    page.wait_for_selector(f"#case-checklists input[data-step='{step}']:checked")
    page.fill("#case-note", "已封堵攻击源，等待复核")
    page.click("#case-add-note")
    page.wait_for_selector("#case-timeline >> text=已封堵攻击源，等待复核")
    timeline = page.inner_text("#case-timeline")
    assert "分析员" in timeline and "检测" in timeline and step in timeline
    s.shot("case")
    with page.context.expect_page() as popup:
        page.click("#case-report")
    report = popup.value
    report.wait_for_load_state()
    assert "安全事件报告" in report.title() and "已封堵攻击源，等待复核" in report.inner_text("body")
    assert report.locator("svg").count() >= 1
    report.close()
    page.goto(url + "#/reports")
    page.wait_for_selector("#report-link")
    page.select_option("#report-period", "week")
    page.fill("#report-end", "2025-08-05T08:00")
    page.dispatch_event("#report-end", "change")
    href = page.get_attribute("#report-link", "href") or ""
    assert "period=week" in href and "end=2025-08-05T00%3A00%3A00.000Z" in href  # Asia/Shanghai 08:00 = 00:00 UTC
    s.shot("reports")
    page.goto(url + href)
    assert "网络安全态势周报" in page.inner_text("h1") and page.locator("svg").count() >= 4
    s.shot("report-week")
    page.goto(url + "#/reports")
    page.wait_for_selector("#report-link")
    page.select_option("#report-format", "pdf")
    pdf = page.request.get(url + (page.get_attribute("#report-link", "href") or ""))
    assert pdf.ok and pdf.body().startswith(b"%PDF-")
    assert not s.errors


def test_intel_page_shows_feeds_and_leads_to_their_alerts(browser: Browser, url: str) -> None:
    s = sign_in(browser, url, "viewer", locale="zh-CN")
    page = s.page
    page.goto(url + "#/intel")
    page.wait_for_selector("#intel-feeds tbody tr")
    feeds = page.inner_text("#intel-feeds")
    assert "cti-stix" in feeds and "misp-lab" in feeds and "ja3-blocklist" in feeds
    assert "45.9.74.78/c2sock" in page.inner_text("#intel-matches")
    s.shot("intel")
    page.locator("#intel-matches a[href*='text=45.9.74.78']").first.click()
    page.wait_for_function("location.hash.startsWith('#/alerts')")
    page.wait_for_selector("main tbody tr")
    assert "Threat intelligence indicator matched" in page.inner_text("main tbody")
    assert not s.errors


def test_notifications_show_what_reached_whom(browser: Browser, url: str) -> None:
    """The record of the replay's notifications: delivered to the webhook, failed on the receiver that was down
    (with the reason), filterable; and an incident lists the notifications sent about it."""
    s = sign_in(browser, url, "viewer", locale="zh-CN")
    page = s.page
    page.goto(url + "#/notifications")
    page.wait_for_selector("#notification-counts")
    counts = page.inner_text("#notification-counts")
    assert "已送达" in counts and "发送失败" in counts
    # the settings in force: routes in file order, channels with the key masked and their deliveries
    assert page.locator("#notify-routes tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)") == [
        "incidents", "red-alerts", "trend"]
    soc = page.inner_text("#notify-channels tr[data-id=soc]")
    assert "access_token=***" in soc and "已送达" in soc and ROBOT_TOKEN not in page.content()
    assert "cannot reach" in page.inner_text("#notify-channels tr[data-id=pager]")
    s.shot("notifications")
    page.select_option("#notification-status", "failed")
    page.click("form.toolbar button[type=submit]")
    page.wait_for_function("location.hash.includes('status=failed')")
    # the page is drawn again once the filtered rows arrive: until then the old table (or none) is there
    page.wait_for_function("""() => {
        const s = [...document.querySelectorAll('#notification-history tbody .nstatus')].map(e => e.textContent);
        return s.length > 0 && s.every(x => x === '发送失败');
    }""")
    assert "cannot reach" in page.locator("#notification-history tbody tr").first.inner_text()
    page.goto(url + "#/notifications?status=delivered")
    page.wait_for_selector("#notification-history tbody a[href^='#/incident/']")
    page.locator("#notification-history tbody a[href^='#/incident/']").first.click()
    page.wait_for_selector("#incident-notifications tbody tr")
    assert "已送达" in page.inner_text("#incident-notifications")
    s.shot("incident-notifications")
    assert not s.errors
