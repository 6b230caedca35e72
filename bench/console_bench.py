"""Console benchmark: the overview page over 10M flows and 100k alerts, in headless Chromium.

    .venv/bin/python bench/console_bench.py      (also run by bench/run.sh)

The store is built once (bench/data/console-store: the store benchmark's tiled
rows) and reused.  Measured, median of 5 loads of a signed-in browser: the
overview API call alone, and the page from navigation until its warning level,
charts and critical-alerts table are drawn (our "first meaningful paint").
Target (issue 6): under 1 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from console.state import ConsoleState  # noqa: E402
from ingest.store.api import prepare  # noqa: E402
from ingest.store.duck import DuckStore  # noqa: E402

DATA = ROOT / "bench" / "data"
DRAWN = """() => document.querySelector('#recent tbody tr') !== null &&
                 ['traffic', 'alerts-levels', 'planes'].every(id => document.getElementById(id).dataset.chart)"""


def build(flows: int, alerts: int) -> Path:
    from store_bench import replay, tiled

    root = DATA / f"console-store-{flows}"
    if (root / "archive").is_dir():
        return root
    standard = DATA / "standard_1000000_300s.pcap"
    flows_src = replay([str(standard)], DATA / "store-flows") if standard.exists() else \
        replay([str(ROOT / "pcaps")], DATA / "store-bundled")
    alerts_src = replay([str(ROOT / "pcaps")], DATA / "store-bundled")
    store = DuckStore(root)
    for b in tiled(prepare("flows", pq.read_table(flows_src / "flows.parquet")), flows, "flow_id",
                   ["first_seen", "last_seen"]):
        store.write("flows", b)
    for b in tiled(prepare("alerts", pq.read_table(alerts_src / "alerts.parquet")), alerts, "alert_id",
                   ["first_seen", "last_seen"]):
        store.write("alerts", b)
    return root


def console_bench(flows: int = 10_000_000, alerts: int = 100_000, runs: int = 5) -> list[str]:
    from playwright.sync_api import sync_playwright

    from tests.console_fixtures import serve_in_thread

    root = build(flows, alerts)
    state = ConsoleState(root / "console")
    if not state.verify("bench", "bench-password-1"):
        state.add_user("bench", "bench-password-1", "viewer")
    store = DuckStore(root)
    url, server = serve_in_thread(store, state)
    chromium = subprocess.run(["bash", str(ROOT / "scripts" / "chromium.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
    api_s, page_s = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True).new_page()
        page.goto(url)
        page.fill("#username", "bench")
        page.fill("#password", "bench-password-1")
        page.click("#login")
        page.wait_for_function(DRAWN, timeout=60_000)
        for _ in range(runs):
            start = time.perf_counter()
            page.evaluate("async () => (await fetch('/api/overview')).json()")
            api_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.goto(url + "#/overview")
            page.reload()
            page.wait_for_function(DRAWN, timeout=60_000, polling=10)
            page_s.append(time.perf_counter() - start)
        browser.close()
    server.should_exit = True
    time.sleep(0.5)
    store.close()
    return ["### console overview (headless Chromium)", "",
            f"{flows:,} flows and {alerts:,} alerts in the embedded store; all data (a week); median of {runs}.", "",
            "| measure | seconds |", "|---|---:|",
            f"| `GET /api/overview` | {statistics.median(api_s):.2f} |",
            f"| page load to warning level, charts and table drawn | {statistics.median(page_s):.2f} |", ""]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    print("\n".join(console_bench()))
