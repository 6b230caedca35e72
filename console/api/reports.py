"""Reports (报告) for download: the daily or weekly situational report and an incident's report, HTML or PDF,
zh-CN or English (console/reports/); every download is audited."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response

from console.api.deps import Ctx, Viewer, client_ip, iso_time
from console.reports import Report, ReportError, incident_report, situation_report, to_pdf

router = APIRouter(prefix="/api/reports", tags=["reports"])
#: a report has no script and nothing remote: its own inline styles and SVG only
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
Language = Literal["zh-CN", "en"]
Format = Literal["html", "pdf"]


def _send(report: Report, fmt: str) -> Response:
    if fmt == "pdf":
        try:
            data = to_pdf(report.html)
        except ReportError as e:
            raise HTTPException(503, str(e)) from e
        return Response(data, media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="{report.name}.pdf"'})
    return Response(report.html, media_type="text/html; charset=utf-8",
                    headers={"Content-Disposition": f'inline; filename="{report.name}.html"',
                             "Content-Security-Policy": REPORT_CSP})


@router.get("/situation", summary="The daily or weekly situational report (态势报告), HTML or PDF", response_class=Response)
def situation(request: Request, user: Viewer, ctx: Ctx, period: Literal["day", "week"] = "day",
              end: str | None = None, lang: Language = "zh-CN", tz: str | None = None,
              format: Format = "html") -> Response:
    try:
        report = situation_report(ctx.store, ctx.state, period, iso_time(end, "end"), lang, tz)
    except ReportError as e:
        raise HTTPException(422, str(e)) from e
    ctx.state.audit(user.username, "report", f"situation-{period}", {"format": format, "lang": lang, "end": end},
                    client_ip(request))
    return _send(report, format)


@router.get("/incident/{incident_id}", summary="An incident's report (事件报告) with its case, HTML or PDF",
            response_class=Response)
def incident(incident_id: str, request: Request, user: Viewer, ctx: Ctx, lang: Language = "zh-CN",
             tz: str | None = None, format: Format = "html") -> Response:
    try:
        report = incident_report(ctx.store, ctx.state, incident_id, lang, tz)
    except ReportError as e:
        raise HTTPException(404 if str(e).startswith("no incident") else 422, str(e)) from e
    ctx.state.audit(user.username, "report", incident_id, {"format": format, "lang": lang}, client_ip(request))
    return _send(report, format)
