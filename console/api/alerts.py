"""Alerts (告警): the filtered list, grouping, an alert's detail with its evidence, flow, session and related
alerts, bulk triage with comments (audited), and the packets of an alert's flow as a capture."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from console.api.deps import Analyst, Ctx, Range, Viewer, client_ip, csv_values
from ingest.retention import flow_packets
from ingest.store.api import ALERT_STATUSES, Condition, Store, StoreError, datetime_of_iso, ns_of_iso
from ingest.store.api import Query as StoreQuery
from sensors.capture.extract import FlowMatch, flow_frames, write_capture
from sensors.capture.seal import SealError

router = APIRouter(prefix="/api", tags=["alerts"])
GROUPS = ("signature", "src_ip", "dst_ip", "category", "detector", "level", "status", "rule_id")
RELATED_WINDOW = dt.timedelta(hours=1)


def alert_query(rng: Range, level: str | None = None, category: str | None = None, detector: str | None = None,
                technique: Annotated[str | None, Query(description="ATT&CK or FiGHT id: T1046, FGT1498")] = None,
                ip: Annotated[str | None, Query(description="address or CIDR, any side")] = None,
                subscriber: Annotated[str | None, Query(description="pseudonymous subscriber token")] = None,
                status: str | None = None, text: str | None = None, sort: str | None = None, limit: int = 50,
                offset: int = 0) -> StoreQuery:
    where = []
    for column, value in (("level", level), ("category", category), ("detector", detector), ("status", status)):
        if values := csv_values(value):
            where.append(Condition(column, "in", values))
    if technique:
        t = technique.strip().lower()
        where.append(Condition("tags", "has", t if "." in t else ("fight." if t.startswith("fgt") else "attack.") + t))
    if subscriber:
        where.append(Condition("session", "contains", subscriber))
    try:
        return StoreQuery("alerts", where, ip=ip or None, text=text or None, start=rng.start, end=rng.end,
                          sort=sort or None, limit=limit, offset=offset)
    except StoreError as e:
        raise HTTPException(422, str(e)) from e


def _with_triage(ctx: Ctx, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    marks = ctx.state.triage([r["alert_id"] for r in rows])
    return [{**r, "assignee": marks.get(r["alert_id"], {}).get("assignee")} for r in rows]


AlertQuery = Annotated[StoreQuery, Depends(alert_query)]


@router.get("/alerts", summary="Alerts, filtered, sorted and paged")
def list_alerts(_: Viewer, ctx: Ctx, q: AlertQuery) -> dict[str, Any]:
    page = _search(ctx.store, q)
    return {"rows": _with_triage(ctx, page.rows), "total": page.total}


@router.get("/alerts/groups", summary="Alerts counted by signature, source, target... (same filters)")
def group_alerts(_: Viewer, ctx: Ctx, q: AlertQuery, by: str = "signature", n: int = 50) -> list[dict[str, Any]]:
    if by not in GROUPS:
        raise HTTPException(422, f"group by one of {', '.join(GROUPS)}")
    return [{"value": g[by], "count": g["count"]} for g in ctx.store.group(q, (by,), min(max(n, 1), 500))]


def _search(store: Store, q: StoreQuery) -> Any:
    try:
        return store.search(q)
    except StoreError as e:
        raise HTTPException(422, str(e)) from e


def get_alert(store: Store, alert_id: str) -> dict[str, Any]:
    rows = store.search(StoreQuery("alerts", [Condition("alert_id", "eq", alert_id)], limit=1)).rows
    if not rows:
        raise HTTPException(404, f"no alert {alert_id}")
    return rows[0]


@router.get("/alerts/{alert_id}", summary="An alert: why it fired, its flow, session, related alerts, triage")
def alert_detail(alert_id: str, _: Viewer, ctx: Ctx) -> dict[str, Any]:
    alert = _with_triage(ctx, [get_alert(ctx.store, alert_id)])[0]
    for key in ("evidence", "session"):
        try:
            alert[key] = json.loads(alert[key]) if alert.get(key) else None
        except ValueError:
            pass  # shown as text
    flow = ctx.store.flow(int(alert["flow_id"])) if alert.get("flow_id") else None
    if flow:
        flow.pop("alerts", None)
    first = datetime_of_iso(alert["first_seen"])
    related = []
    for ip in {alert.get("src_ip"), alert.get("dst_ip")} - {None}:
        related += ctx.store.search(StoreQuery("alerts", ip=ip, start=first - RELATED_WINDOW,
                                               end=first + RELATED_WINDOW, limit=20)).rows
    unique: dict[str, dict[str, Any]] = {}
    for r in related:
        if r["alert_id"] != alert_id:
            unique.setdefault(r["alert_id"], r)
    related = sorted(unique.values(), key=lambda r: r["first_seen"], reverse=True)
    audit, _total = ctx.state.audit_log(limit=50, target=alert_id)
    return {"alert": alert, "flow": flow, "related": related[:20], "comments": ctx.state.comments(alert_id),
            "audit": audit}


class Triage(BaseModel):
    alert_ids: list[str] = Field(min_length=1, max_length=1000)
    status: str | None = Field(default=None, description=", ".join(ALERT_STATUSES))
    assignee: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=4000)


@router.post("/alerts/triage", summary="Bulk triage: status, assignee and a comment for alerts (analyst)")
def triage(body: Triage, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    if body.status is not None and body.status not in ALERT_STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(ALERT_STATUSES)}")
    if body.status is None and body.assignee is None and not body.comment:
        raise HTTPException(422, "nothing to do: give a status, an assignee or a comment")
    found = []
    for alert_id in body.alert_ids:
        if body.status is not None:
            if ctx.store.set_alert_status(alert_id, body.status):
                found.append(alert_id)
        elif ctx.store.search(StoreQuery("alerts", [Condition("alert_id", "eq", alert_id)], limit=0)).total:
            found.append(alert_id)
    missing = sorted(set(body.alert_ids) - set(found))
    ctx.state.set_triage(found, user.username, body.status, body.assignee, body.comment)
    for alert_id in found:
        ctx.state.audit(user.username, "triage", alert_id, {k: v for k, v in (
            ("status", body.status), ("assignee", body.assignee), ("comment", body.comment)) if v is not None},
            client_ip(request))
    return {"updated": found, "missing": missing}


def flow_pcap(ctx: Ctx, flow_id: int, user: str, request: Request) -> Response:
    flow = ctx.store.flow(flow_id)
    if flow is None:
        raise HTTPException(404, f"no flow {flow_id}")
    first, last = flow["first_seen"], flow["last_seen"]
    stats = ctx.store.search(StoreQuery("sensor_stats", limit=10_000, sort="ts")).rows
    overlapping = [s for s in stats if s["ts"] >= first and (s.get("first_ts") or "") <= last]
    sources = [s for s in dict.fromkeys(s["source"] for s in overlapping) if Path(s).is_file()]
    evidence = [e for e in dict.fromkeys(s.get("evidence") for s in overlapping) if e and Path(e).is_dir()]
    if not sources and not evidence:
        raise HTTPException(404, "the capture holding this flow is not available on the console's machine"
                                 + (" (its packets were not retained)" if overlapping else ""))

    match = FlowMatch(flow["src_ip"], flow["dst_ip"], int(flow["src_port"] or 0), int(flow["dst_port"] or 0),
                      int(flow["ip_proto"]), ns_of_iso(first), ns_of_iso(last), flow.get("tunnel_src_ip"),
                      flow.get("tunnel_dst_ip"))
    frames = flow_frames(sources, match)
    for directory in evidence:
        try:
            frames += flow_packets(Path(directory), flow, match, ctx.evidence_keyring)
        except SealError as exc:
            ctx.state.audit(user, "pcap_download_failed", str(flow_id), {"error": str(exc)}, client_ip(request))
            raise HTTPException(503, f"the retained packets cannot be opened: {exc}") from None
    if not frames:
        raise HTTPException(404, "no packets of this flow in its capture files"
                                 + (" (retained packets may have been rotated out)" if evidence else ""))
    ctx.state.audit(user, "pcap_download", str(flow_id), {"packets": len(frames)}, client_ip(request))
    name = f"liaowang-flow-{flow_id}.pcap" if len({f[2] for f in frames}) == 1 else f"liaowang-flow-{flow_id}.pcapng"
    return Response(write_capture(frames), media_type="application/vnd.tcpdump.pcap",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/alerts/{alert_id}/pcap", summary="The packets of the alert's flow as a pcap (re-extracted from the "
                                               "capture file)", response_class=Response)
def alert_pcap(alert_id: str, request: Request, user: Viewer, ctx: Ctx) -> Response:
    alert = get_alert(ctx.store, alert_id)
    if not alert.get("flow_id"):
        raise HTTPException(404, "this alert has no single flow (an aggregate over many): open its evidence")
    return flow_pcap(ctx, int(alert["flow_id"]), user.username, request)
