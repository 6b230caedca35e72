"""Reports (态势报告, 事件报告): the daily or weekly situational report and the per-incident report, in zh-CN or
English, as one self-contained HTML page (charts inline SVG, no script) that ``pdf.py`` prints to PDF.

Both read the store (what sensors saw) and the console's state (cases: what analysts did), the same on every
backend; ``liaowang report`` and the console's downloads call the same functions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from console.api.overview import extent, posture
from console.playbooks import load_playbooks
from console.reports.charts import GRADE_COLORS, gantt, hbars, line, stacked_bars
from console.reports.words import WORDS
from console.state import ConsoleState, describe_event
from ingest.store.api import GRADES, Condition, Query, Store, datetime_of_iso, datetime_of_ns

PERIODS = {"day": dt.timedelta(days=1), "week": dt.timedelta(days=7)}
LANGUAGES = ("zh-CN", "en")
MAX_ROWS = 50


class ReportError(Exception):
    """A report that cannot be made (no such incident, nothing stored, no PDF printer): one message."""


@dataclass
class Report:
    name: str  # a file name without extension: liaowang-situation-day-20250804
    title: str
    html: str


def situation_report(store: Store, state: ConsoleState | None, period: str = "day", end: dt.datetime | None = None,
                     lang: str = "zh-CN", tz: str | None = None) -> Report:
    """The situation over the ``period`` (day or week) that ends at ``end`` (default: the latest stored data)."""
    w, zone = _words(lang), _zone(tz, lang)
    if period not in PERIODS:
        raise ReportError(f"period must be one of {', '.join(PERIODS)}")
    if end is None:
        last = extent(store)["last"]
        if last is None:
            raise ReportError("the store holds no flows or alerts yet: nothing to report")
        end = datetime_of_iso(last) + dt.timedelta(microseconds=1)
    start = end - PERIODS[period]
    bucket = 3600 if period == "day" else 6 * 3600
    histogram = store.histogram(start, end, bucket)
    levels = {r["level"]: r["count"] for r in store.group(Query("alerts", start=start, end=end), ("level",), 8)}
    grade = next((g for g in GRADES if levels.get(g)), "normal")
    incidents = store.search(Query("incidents", [Condition("merged_into", "eq", "")], start=start, end=end,
                                   sort="-score", limit=MAX_ROWS))
    by_level = {r["level"]: r["count"] for r in store.group(
        Query("incidents", [Condition("merged_into", "eq", "")], start=start, end=end), ("level",), 8)}
    sent = {r["status"]: r["count"] for r in store.group(Query("notifications", start=start, end=end), ("status",), 8)}
    intel = store.search(Query("alerts", [Condition("detector", "eq", "intel")], start=start, end=end, limit=0)).total
    changes = store.search(Query("posture_changes", start=start, end=end, limit=20)).rows
    trend_warnings = store.search(Query("trend_warnings", start=start, end=end, limit=20)).rows
    trend = {r["series"]: r for r in store.search(Query("trend", limit=100)).rows}
    cases = {c["incident_id"]: c for c in (state.cases(limit=500)[0] if state else [])}
    totals = {k: sum(b[k] for b in histogram) for k in ("flows", "packets", "bytes", "alerts")}
    title = w["situation_" + period]

    html = [_header(title, w, [(w["period"], f"{_time(start, zone)} — {_time(end, zone)} ({zone.key})"),
                               (w["generated"], _time(dt.datetime.now(dt.UTC), zone))])]
    html.append(_section(w["summary"], _summary_cards([
        (w["warning_level"], w["level_" + grade], grade),
        (w["posture_score"], f"{posture(levels):g}", None),
        (w["alerts"], " · ".join(f"{w['level_' + g]} {levels.get(g, 0)}" for g in GRADES), None),
        (w["incidents"], " · ".join(f"{w['level_' + g]} {by_level.get(g, 0)}" for g in GRADES), None),
        (w["traffic"], f"{totals['flows']:,} {w['flows']} · {totals['packets']:,} {w['packets']} · "
                       f"{_bytes(totals['bytes'])}", None),
        (w["notifications"], " · ".join(f"{w.get('status_' + k, k)} {v}" for k, v in sorted(sent.items())) or "—",
         None),
        (w["intel_matches"], str(intel), None)])))
    labels = [_time(b["bucket"], zone, short=True) for b in histogram]
    html.append(_section(w["alerts_over_time"], stacked_bars(labels, [
        (w["level_" + g], GRADE_COLORS[g], [b[f"alerts_{g}"] for b in histogram]) for g in GRADES])))
    html.append(_section(w["traffic_over_time"], stacked_bars(labels, [(w["bytes"], "#0891b2",
                                                                        [b["bytes"] for b in histogram])])))
    top = [(w["top_signatures"], ("signature",)), (w["top_sources"], ("src_ip",)), (w["top_targets"], ("dst_ip",))]
    for name, by in top:
        rows = store.group(Query("alerts", start=start, end=end), by, 10)
        html.append(_section(name, hbars([(str(r[by[0]] or "?"), r["count"]) for r in rows]) if rows
                             else _nothing(w)))
    planes = store.plane_mix(start, end)
    html.append(_section(w["planes"], hbars([(p["plane"], p["bytes"]) for p in planes], color="#7c3aed") if planes
                         else _nothing(w)))
    html.append(_section(f"{w['incidents']} ({incidents.total})", _table(
        [w["level"], w["score"], w["incident"], w["stages"], w["state"], w["case"], w["first_seen"]],
        [[_pill(i["level"], w), f"{i['score']:g}", escape(i["title"]),
          escape(" → ".join(w.get("tactic_" + t, t) for t in i["tactics"])), escape(w["state_" + i["state"]]),
          escape(cases[i["incident_id"]]["case_id"] if i["incident_id"] in cases else "—"),
          _time(i["first_seen"], zone)] for i in incidents.rows], w)))
    html.append(_section(w["posture_changes"], _table(
        [w["time"], w["scope"], w["level"], w["reason"]],
        [[_time(c["ts"], zone), escape(c["scope"]),
          f"{_pill(c['from_level'], w)} → {_pill(c['to_level'], w)}", escape(c["reason"])] for c in changes], w)))
    charts = "".join(f'<figure>{line(r["history"], r["forecast"], r["threshold"])}<figcaption>{escape(name)}'
                     f"</figcaption></figure>" for name in ("alerts:all", "traffic:packets") if (r := trend.get(name)))
    html.append(_section(w["trend"], charts + _table(
        [w["time"], w["kind"], w["series"], w["reason"]],
        [[_time(t["ts"], zone), escape(w["trend_" + t["kind"]]), escape(t["series"]),
          escape(t["reason"])] for t in trend_warnings], w)))
    day = (end - dt.timedelta(microseconds=1)).astimezone(zone).strftime("%Y%m%d")
    return Report(f"liaowang-situation-{period}-{day}", title, _page(title, lang, html))


def incident_report(store: Store, state: ConsoleState | None, incident_id: str, lang: str = "zh-CN",
                    tz: str | None = None) -> Report:
    """One incident: its stages on a time axis, entities, alerts, notifications, and its case when it has one."""
    w, zone = _words(lang), _zone(tz, lang)
    i = store.incident(incident_id)
    if i is None:
        raise ReportError(f"no incident {incident_id}")
    alerts = store.incident_alerts(i)
    sent = store.notifications_about(incident_id)
    case = state.case_of_incident(incident_id) if state else None
    title = f"{w['incident_report']}: {i['title']}"
    html = [_header(title, w, [(w["incident"], incident_id), (w["generated"], _time(dt.datetime.now(dt.UTC), zone)),
                               (w["timezone"], zone.key)])]
    html.append(_section(w["summary"], _summary_cards([
        (w["level"], w["level_" + i["level"]], i["level"]), (w["score"], f"{i['score']:g}", None),
        (w["state"], w["state_" + i["state"]], None), (w["alerts"], str(i["alert_count"]), None),
        (w["first_seen"], _time(i["first_seen"], zone), None),
        (w["last_seen"], _time(i["last_seen"], zone), None)])))
    html.append(_section(w["stages"], gantt([(w.get("tactic_" + s["tactic"], s["tactic"]), s["first_seen_ns"],
                                              s["last_seen_ns"]) for s in i["stages"]], GRADE_COLORS[i["level"]])
                         + _table([w["stage"], w["first_seen"], w["last_seen"], w["alerts"], w["signatures"]],
                                  [[escape(w.get("tactic_" + s["tactic"], s["tactic"])),
                                    _time(s["first_seen_ns"], zone), _time(s["last_seen_ns"], zone),
                                    str(s["alerts"]), escape("; ".join(s["signatures"]))] for s in i["stages"]], w)))
    html.append(_section(w["entities"], _table([w["entities"], w["affected_assets"], w["subscribers"], w["slices"]], [[
        escape(", ".join(i["entities"])), escape(", ".join(i["affected_assets"])) or "—",
        escape(", ".join(i["subscribers"])) or "—", escape(", ".join(i["slices"])) or "—"]], w)))
    actors = [e.split(":", 1)[1] for e in i["entities"] if e.startswith("host:")]
    html.append(_section(w["containment"], f"<p>{escape(w['containment_hint'])}</p>" + (
        f"<p class=mono>{escape(', '.join(actors))}</p>" if actors else "")))
    if case is not None:
        html.append(_case_section(case, state, w, zone, lang))
    html.append(_section(f"{w['alerts']} ({len(alerts)})", _table(
        [w["time"], w["level"], w["signature"], w["source"], w["target"], w["score"]],
        [[_time(a["first_seen"], zone), _pill(a["level"], w), escape(a["signature"]),
          escape(a.get("src_ip") or ""), escape(a.get("dst_ip") or ""), f"{a['score']:g}"] for a in alerts[:200]], w)))
    html.append(_section(w["notifications"], _table(
        [w["time"], w["channel"], w["level"], w["status_word"]],
        [[_time(n["created"], zone), escape(n["channel"]), _pill(n["level"], w),
          escape(w.get("status_" + n["status"], n["status"]))] for n in sent], w)))
    return Report(f"liaowang-incident-{incident_id}", title, _page(title, lang, html))


def _case_section(case: dict[str, Any], state: ConsoleState | None, w: dict[str, str], zone: ZoneInfo,
                  lang: str) -> str:
    assert state is not None
    work = state.case_work(case["case_id"])
    books = {b.id: b for b in load_playbooks()}
    checklist = []
    for pid in case["playbooks"]:
        if pid in books:
            steps = "".join(f"<li>{'☑' if work['checks'].get(s.key, {}).get('done') else '☐'} {escape(s.text[lang])}</li>"
                            for s in books[pid].steps)
            checklist.append(f"<h3>{escape(books[pid].title[lang])}</h3><ul class=checklist>{steps}</ul>")
    notes = [e for e in work["events"] if e["kind"] in ("note", "state", "assigned")]
    body = (f"<p>{escape(case['case_id'])} · {w['state']}: {escape(w['state_' + case['state']])} · "
            f"{w['assignee']}: {escape(case['assignee'] or '—')} · {w['opened_by']}: {escape(case['created_by'] or '')}"
            f"</p>{''.join(checklist)}<h3>{w['notes']}</h3>" + _table(
                [w["time"], w["user"], w["kind"], w["detail"]],
                [[_time(e["ts_ms"] * 1_000_000, zone), escape(e["username"] or ""),
                  escape(w.get("event_" + e["kind"], e["kind"])), escape(describe_event(e))] for e in notes], w)
            + f"<h3>{w['evidence']}</h3>" + _table(
                [w["kind"], w["reference"], w["label"]],
                [[escape(w.get("evidence_" + e["kind"], e["kind"])), escape(e["ref"]), escape(e["label"] or "")]
                 for e in work["evidence"]], w))
    return _section(w["case"], body)


# -- HTML ---------------------------------------------------------------------------------

STYLE = """
@page { size: A4; margin: 14mm 12mm; }
body { font-family: "Noto Sans CJK SC", "Noto Sans SC", "Microsoft YaHei", sans-serif; color: #1f2937; margin: 0 auto;
       max-width: 760px; font-size: 12px; line-height: 1.45; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 15px; border-bottom: 2px solid #1e3a8a; padding-bottom: 2px;
  margin: 18px 0 8px; color: #1e3a8a; } h3 { font-size: 13px; margin: 10px 0 4px; }
.meta { color: #4b5563; margin: 0 0 10px; } .meta span { margin-right: 16px; }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
.card { border: 1px solid #d1d5db; border-radius: 4px; padding: 6px 8px; } .card b { display: block; font-size: 14px; }
.card.red { background: #fee2e2; } .card.orange { background: #ffedd5; } .card.yellow { background: #fef9c3; }
.card.blue { background: #dbeafe; } .card.normal { background: #dcfce7; }
table { border-collapse: collapse; width: 100%; margin: 4px 0; } th, td { border-bottom: 1px solid #e5e7eb;
  padding: 3px 4px; text-align: left; vertical-align: top; } th { background: #f3f4f6; }
tr { page-break-inside: avoid; } section { page-break-inside: auto; }
.pill { color: #fff; border-radius: 3px; padding: 0 4px; white-space: nowrap; }
.pill.red { background: #dc2626; } .pill.orange { background: #ea580c; } .pill.yellow { background: #ca8a04; }
.pill.blue { background: #2563eb; } .pill.normal { background: #16a34a; }
.mono { font-family: monospace; } .dim { color: #6b7280; } figure { display: inline-block; margin: 0 8px 6px 0; }
figcaption { font-size: 10px; color: #4b5563; text-align: center; } .checklist { list-style: none; padding-left: 4px; }
"""


def _page(title: str, lang: str, sections: list[str]) -> str:
    return (f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def _header(title: str, w: dict[str, str], meta: list[tuple[str, str]]) -> str:
    spans = "".join(f"<span>{escape(k)}: {escape(v)}</span>" for k, v in meta)
    return f"<h1>{escape(w['brand'])} · {escape(title)}</h1><p class=meta>{spans}</p>"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _summary_cards(cards: list[tuple[str, str, str | None]]) -> str:
    return "<div class=cards>" + "".join(f'<div class="card {grade or ""}">{escape(k)}<b>{escape(v)}</b></div>'
                                         for k, v, grade in cards) + "</div>"


def _table(head: list[str], rows: list[list[str]], w: dict[str, str]) -> str:
    """Cells are HTML already (escaped by the caller)."""
    if not rows:
        return _nothing(w)
    return ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</tbody></table>")


def _nothing(w: dict[str, str]) -> str:
    return f"<p class=dim>{escape(w['nothing'])}</p>"


def _pill(level: str, w: dict[str, str]) -> str:
    return f'<span class="pill {escape(level)}">{escape(w.get("level_" + level, level))}</span>'


def _words(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise ReportError(f"language must be one of {', '.join(LANGUAGES)}")
    return WORDS[lang]


def _zone(tz: str | None, lang: str) -> ZoneInfo:
    name = tz or ("Asia/Shanghai" if lang == "zh-CN" else "UTC")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as e:
        raise ReportError(f"unknown time zone {name!r}") from e


def _time(t: dt.datetime | str | int, zone: ZoneInfo, short: bool = False) -> str:
    """A time (a datetime, the store's ISO text or ns since the epoch) in the report's zone."""
    when = datetime_of_iso(t) if isinstance(t, str) else datetime_of_ns(t) if isinstance(t, int) else t
    return when.astimezone(zone).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
