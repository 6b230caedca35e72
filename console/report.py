"""``liaowang report``: the daily or weekly situational report, or one incident's report, as HTML or PDF in
zh-CN or English (console/reports/)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="situational report (day, week) or an incident's report, HTML or PDF, "
                                      "zh-CN or English")
    p.add_argument("kind", choices=("situation", "incident"), help="situation: the period's report; incident: one")
    p.add_argument("incident", nargs="?", default="", help="with incident: its id (inc-...)")
    p.add_argument("--period", choices=("day", "week"), default="day", help="with situation (default day)")
    p.add_argument("--end", metavar="ISO", help="with situation: the period's end (default: the latest stored data)")
    p.add_argument("--lang", choices=("zh-CN", "en"), default="zh-CN", help="language (default zh-CN)")
    p.add_argument("--tz", metavar="ZONE", help="time zone of the times shown (default Asia/Shanghai for zh-CN, "
                                                "UTC for en)")
    p.add_argument("--format", choices=("html", "pdf"), default="html", help="html (default) or pdf (Chromium)")
    p.add_argument("--out", metavar="FILE", help="file to write (default: the report's name in the current directory)")
    p.add_argument("--store", metavar="URI", help="DuckDB store directory or http(s)://elasticsearch:9200 "
                                                  "(default: $LIAOWANG_STORE or the user's data directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from console.app import state_dir
    from console.reports import ReportError, incident_report, situation_report, to_pdf
    from console.state import ConsoleState
    from ingest.store import StoreError, open_store, store_uri

    if args.kind == "incident" and not args.incident:
        print("liaowang: error: report incident needs the incident's id", file=sys.stderr)
        return 2
    try:
        end = dt.datetime.fromisoformat(args.end.replace("Z", "+00:00")) if args.end else None
    except ValueError:
        print(f"liaowang: error: --end: not an ISO-8601 time: {args.end!r}", file=sys.stderr)
        return 2
    if end is not None and end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    uri = store_uri(args.store)
    try:
        with open_store(uri) as store:
            state = ConsoleState(state_dir(uri))
            report = (situation_report(store, state, args.period, end, args.lang, args.tz) if args.kind == "situation"
                      else incident_report(store, state, args.incident, args.lang, args.tz))
            data = to_pdf(report.html) if args.format == "pdf" else report.html.encode()
            out = Path(args.out or f"{report.name}.{args.format}")
            out.write_bytes(data)
            state.audit(getpass.getuser(), "report", args.incident or f"situation-{args.period}",
                        {"format": args.format, "lang": args.lang, "via": "cli", "file": str(out)})
    except (ReportError, StoreError, OSError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out} ({len(data):,} bytes): {report.title}")
    return 0
