"""Emergency response (应急处置): containment exports from incidents and alerts (console/containment.py),
for analysts; every export is audited with what it blocks."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from console import containment
from console.api.deps import Analyst, Ctx, client_ip
from ingest.store.api import Condition
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["response"])
MAX_SUBJECTS = 500


class ExportRequest(BaseModel):
    format: str = Field(description=", ".join(containment.FORMATS))
    incident_ids: list[str] = Field(default_factory=list, max_length=MAX_SUBJECTS)
    alert_ids: list[str] = Field(default_factory=list, max_length=MAX_SUBJECTS)


def _rows(ctx: Ctx, table: str, column: str, values: list[Any], limit: int = MAX_SUBJECTS * 4) -> list[dict[str, Any]]:
    if not values:
        return []
    return ctx.store.search(StoreQuery(table, [Condition(column, "in", list(values))], limit=limit)).rows


def build_plan(ctx: Ctx, incident_ids: list[str], alert_ids: list[str]) -> containment.Plan:
    """The selection with its 5G sessions (of its subscribers and of its alerts) and the NF addresses kept safe."""
    incidents = _rows(ctx, "incidents", "incident_id", incident_ids)
    alerts = _rows(ctx, "alerts", "alert_id", alert_ids)
    if len(incidents) != len(set(incident_ids)) or len(alerts) != len(set(alert_ids)):
        found = {r["incident_id"] for r in incidents} | {r["alert_id"] for r in alerts}
        missing = sorted((set(incident_ids) | set(alert_ids)) - found)
        raise HTTPException(404, f"not found: {', '.join(missing[:5])}")
    sessions: list[tuple[dict[str, Any], str, str]] = []
    for inc in incidents:
        for s in _rows(ctx, "sessions", "subscriber", list(inc.get("subscribers") or [])):
            sessions.append((s, inc["incident_id"], inc["title"]))
        alerts_of = _rows(ctx, "alerts", "alert_id", list(inc.get("alert_ids") or []))
        sessions += _alert_sessions(ctx, alerts_of, inc["incident_id"])
    sessions += _alert_sessions(ctx, alerts, None)
    inventory = ctx.store.search(StoreQuery("nf_inventory", limit=10_000)).rows
    roles: dict[str, str] = {}
    for r in inventory:
        roles[r["ip"]] = ", ".join(filter(None, [roles.get(r["ip"]), r["role"]]))
    return containment.plan(incidents, alerts, sessions, roles)


def _alert_sessions(ctx: Ctx, alerts: list[dict[str, Any]], subject: str | None) -> list[tuple[dict[str, Any], str, str]]:
    by_id: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a.get("session"):
            by_id[json.loads(a["session"])["session_id"]] = a
    return [(s, subject or by_id[s["session_id"]]["alert_id"], by_id[s["session_id"]]["signature"])
            for s in _rows(ctx, "sessions", "session_id", list(by_id))]


@router.post("/containment", summary="A containment export (nftables, iptables, suricata, stix, core) of incidents "
                                     "and alerts (analyst; audited)", response_class=Response)
def export(body: ExportRequest, request: Request, user: Analyst, ctx: Ctx) -> Response:
    if body.format not in containment.FORMATS:
        raise HTTPException(422, f"format must be one of {', '.join(containment.FORMATS)}")
    if not body.incident_ids and not body.alert_ids:
        raise HTTPException(422, "select at least one incident or alert")
    p = build_plan(ctx, body.incident_ids, body.alert_ids)
    now = dt.datetime.now(tz=dt.UTC)
    text = containment.render(p, body.format, user.username, now)
    ctx.state.audit(user.username, "containment_export", ",".join(p.subjects)[:500],
                    {"format": body.format, "blocked": sorted(p.blocks), "withheld": p.withheld,
                     "core_items": len(p.core)}, client_ip(request))
    media, ext = containment.FORMATS[body.format]
    name = f"liaowang-containment-{now.strftime('%Y%m%dT%H%M%SZ')}.{ext}"
    return Response(text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})
