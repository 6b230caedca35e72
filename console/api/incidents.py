"""Incidents (事件): alerts of one actor as a story of stages, graded; an incident's alerts and its state,
which analysts move (investigating, contained, closed; audited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from console.api.deps import Analyst, Ctx, Range, Viewer, client_ip, csv_values
from detection.incidents import STATES
from ingest.store.api import Condition, StoreError
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["incidents"])


@router.get("/incidents", summary="Incidents, filtered (level, state, text), sorted and paged")
def list_incidents(_: Viewer, ctx: Ctx, rng: Range, level: str | None = None, state: str | None = None,
                   text: str | None = None, sort: str = "-score", limit: int = 50, offset: int = 0) -> dict[str, Any]:
    where = [Condition(column, "in", values) for column, values in (("level", csv_values(level)), ("state", csv_values(state)))
             if values] + [Condition("merged_into", "eq", "")]  # a merged incident lives on in the one it joined
    try:
        page = ctx.store.search(StoreQuery("incidents", where, text=text or None, start=rng.start, end=rng.end,
                                           sort=sort or None, limit=min(max(limit, 1), 500), offset=max(offset, 0)))
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    return {"rows": page.rows, "total": page.total}


def get_incident(ctx: Ctx, incident_id: str) -> dict[str, Any]:
    incident = ctx.store.incident(incident_id)
    if incident is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return incident


@router.get("/incidents/{incident_id}", summary="An incident: its stages, entities, alerts, posture impact, "
            "notifications, audit trail and case")
def incident_detail(incident_id: str, _: Viewer, ctx: Ctx) -> dict[str, Any]:
    incident = get_incident(ctx, incident_id)
    audit, _total = ctx.state.audit_log(limit=50, target=incident_id)
    return {"incident": incident, "alerts": ctx.store.incident_alerts(incident), "audit": audit,
            "notifications": ctx.store.notifications_about(incident_id),
            "posture": ctx.store.posture_impact(incident), "case": ctx.state.case_of_incident(incident_id)}


class StateChange(BaseModel):
    state: str = Field(description=", ".join(STATES))
    comment: str | None = Field(default=None, max_length=4000)


@router.post("/incidents/{incident_id}/state", summary="Move an incident: investigating, contained, closed (analyst)")
def set_state(incident_id: str, body: StateChange, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    if body.state not in STATES:
        raise HTTPException(422, f"state must be one of {', '.join(STATES)}")
    if not ctx.store.set_incident_state(incident_id, body.state):
        raise HTTPException(404, f"no incident {incident_id}")
    ctx.state.audit(user.username, "incident_state", incident_id,
                    {k: v for k, v in (("state", body.state), ("comment", body.comment)) if v}, client_ip(request))
    return {"incident_id": incident_id, "state": body.state}
