"""HTML reports printed to PDF by headless Chromium (``scripts/chromium.sh`` installs it with the CJK fonts the
Chinese reports need): the same engine that renders the console, so the PDF looks like the HTML."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from console.reports.render import ReportError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60.0


def browser() -> str:
    """The Chromium to print with ($LIAOWANG_CHROMIUM, else the first on PATH)."""
    found = os.environ.get("LIAOWANG_CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    if not found:
        raise ReportError("PDF reports need Chromium: run scripts/chromium.sh (or set LIAOWANG_CHROMIUM), "
                          "or ask for --format html")
    return found


def to_pdf(html: str) -> bytes:
    """The report as PDF bytes (A4, no browser header or footer)."""
    exe = browser()
    with tempfile.TemporaryDirectory(prefix="liaowang-report-") as tmp:
        page, out = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        # the report has no script and no remote resource; the profile lives and dies with the temporary directory
        command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--disable-extensions", "--disable-background-networking",
                   f"--user-data-dir={tmp}/profile", "--no-pdf-header-footer", f"--print-to-pdf={out}",
                   page.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise ReportError(f"Chromium did not print the report within {TIMEOUT_S:.0f} s") from e
        if not out.exists() or out.stat().st_size == 0:
            raise ReportError(f"Chromium could not print the report: {done.stderr.strip()[-300:]}")
        return out.read_bytes()
