"""Cases (案件): an incident taken up by analysts, with a timeline, notes, an assignee, evidence (alerts, flows,
their packets) and the checklists of the playbooks its alerts call for (console/playbooks.py).  Every change is
audited; moving a case moves its incident's state with it."""

from __future__ import annotations

import functools
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from console.api.deps import Analyst, Ctx, Viewer, client_ip, csv_values
from console.api.incidents import get_incident
from console.playbooks import Playbook, applicable, load_playbooks
from console.state import EVIDENCE_KINDS, case_key, describe_event
from detection.incidents import STATES
from ingest.store.api import Condition, Query, Store, iso_ns

router = APIRouter(prefix="/api", tags=["cases"])
MAX_TIMELINE_ALERTS = 200


@functools.cache
def playbooks() -> list[Playbook]:
    """The bundled playbooks (read once: edits take effect when the console restarts)."""
    return load_playbooks()


def _case(ctx: Ctx, case_id: str) -> dict[str, Any]:
    case = ctx.state.case(case_id) if case_key(case_id) is not None else None
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    return case


@router.get("/cases", summary="Cases, the latest changed first (state, assignee), with their incidents' level")
def list_cases(_: Viewer, ctx: Ctx, state: str | None = None, assignee: str | None = None, limit: int = 50,
               offset: int = 0) -> dict[str, Any]:
    rows, total = ctx.state.cases(csv_values(state), assignee or None, min(max(limit, 1), 500), max(offset, 0))
    incidents = {r["incident_id"]: r for r in ctx.store.search(Query(
        "incidents", [Condition("incident_id", "in", [c["incident_id"] for c in rows])], limit=len(rows) or 1)).rows}
    steps = {b.id: len(b.steps) for b in playbooks()}
    for c in rows:
        i = incidents.get(c["incident_id"], {})
        c.update(level=i.get("level"), score=i.get("score"), steps=sum(steps.get(p, 0) for p in c["playbooks"]))
    return {"rows": rows, "total": total}


@router.post("/incidents/{incident_id}/case", summary="Open the incident's case (or return the one it has) (analyst)")
def open_case(incident_id: str, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    incident = get_incident(ctx, incident_id)
    books = [b.id for b in applicable(playbooks(), incident, ctx.store.incident_alerts(incident))]
    case, opened = ctx.state.open_case(incident_id, incident["title"], user.username, books)
    if opened:
        ctx.state.audit(user.username, "case_open", case["case_id"], {"incident": incident_id, "playbooks": books},
                        client_ip(request))
        if incident["state"] == "new":  # taken up: escalation stops
            ctx.store.set_incident_state(incident_id, "investigating")
    return case


@router.get("/cases/{case_id}", summary="A case: its incident, playbook checklists, evidence and timeline")
def case_detail(case_id: str, _: Viewer, ctx: Ctx) -> dict[str, Any]:
    case = _case(ctx, case_id)
    incident = get_incident(ctx, case["incident_id"])
    alerts = ctx.store.incident_alerts(incident)
    work = ctx.state.case_work(case_id)
    by_id = {b.id: b for b in playbooks()}
    books = [{"id": p, "title": by_id[p].title, "steps": [{"key": s.key, "text": s.text, **work["checks"].get(
        s.key, {"done": False})} for s in by_id[p].steps]} for p in case["playbooks"] if p in by_id]
    sent = ctx.store.notifications_about(case["incident_id"])
    return {"case": case, "incident": incident, "alerts": alerts, "playbooks": books,
            "evidence": _evidence(ctx.store, work["evidence"]), "timeline": timeline(incident, alerts, sent, work),
            "users": [u["username"] for u in ctx.state.users() if u["role"] != "viewer"]}


def timeline(incident: dict[str, Any], alerts: list[dict[str, Any]], sent: list[dict[str, Any]],
             work: dict[str, Any]) -> list[dict[str, Any]]:
    """What detection saw (event time), what was notified and what analysts did (wall time), oldest first."""
    events = [{"ts": iso_ns(s["first_seen_ns"]), "source": "detection", "kind": "stage", "user": None,
               "text": f"{s['tactic']}: {', '.join(s['signatures'][:3])} ({s['alerts']})"}
              for s in incident["stages"]]
    events += [{"ts": a["first_seen"], "source": "detection", "kind": "alert", "user": None,
                "text": f"{a['level']} {a['signature']} {a.get('src_ip') or ''} -> {a.get('dst_ip') or ''}"}
               for a in alerts[:MAX_TIMELINE_ALERTS]]
    events += [{"ts": n["created"], "source": "notification", "kind": n["kind"], "user": None,
                "text": f"{n['channel']} ({n['channel_type']}): {n['status']}"} for n in sent]
    events += [{"ts": iso_ns(e["ts_ms"] * 1_000_000), "source": "analyst", "kind": e["kind"], "user": e["username"],
                "text": describe_event(e)} for e in work["events"]]
    return sorted(events, key=lambda e: (str(e["ts"]), e["source"]))


def _evidence(store: Store, evidence: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evidence rows with what they point at: an alert's signature, a flow's endpoints, a pcap's download link."""
    out = []
    for e in evidence:
        row = dict(e)
        if e["kind"] == "alert":
            found = store.search(Query("alerts", [Condition("alert_id", "eq", e["ref"])], limit=1)).rows
            row["summary"] = f"{found[0]['level']} {found[0]['signature']}" if found else None
        elif e["kind"] in ("flow", "pcap"):
            found = store.search(Query("flows", [Condition("flow_id", "eq", int(e["ref"]))], limit=1)).rows
            row["summary"] = (f"{found[0]['src_ip']}:{found[0]['src_port']} -> {found[0]['dst_ip']}:{found[0]['dst_port']}"
                              f" {found[0]['application_hint'] or ''}".strip()) if found else None
            if e["kind"] == "pcap":
                row["href"] = f"/api/flows/{e['ref']}/pcap"
        out.append(row)
    return out


class Note(BaseModel):
    text: str = Field(min_length=1, max_length=8000)


class Assign(BaseModel):
    assignee: str = Field(min_length=1, max_length=200)


class CaseState(BaseModel):
    state: str = Field(description=", ".join(STATES))
    comment: str | None = Field(default=None, max_length=4000)


class Evidence(BaseModel):
    kind: Literal["alert", "flow", "pcap", "file"] = Field(description=", ".join(EVIDENCE_KINDS))
    ref: str = Field(min_length=1, max_length=500, description="alert id, flow id, or a file's name or location")
    label: str | None = Field(default=None, max_length=500)


class Check(BaseModel):
    step: str = Field(min_length=1, max_length=200, description="playbook/step, as the case lists it")
    done: bool


def _record(ctx: Ctx, request: Request, user: str, case_id: str, kind: str, body: dict[str, Any],
            **moves: str | None) -> dict[str, Any]:
    ctx.state.case_event(case_id, user, kind, body, **moves)
    ctx.state.audit(user, f"case_{kind}", case_id, body, client_ip(request))
    return ctx.state.case(case_id) or {}


@router.post("/cases/{case_id}/notes", summary="Add a note to the case's timeline (analyst)")
def add_note(case_id: str, body: Note, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    _case(ctx, case_id)
    return _record(ctx, request, user.username, case_id, "note", {"text": body.text})


@router.post("/cases/{case_id}/assign", summary="Give the case to an analyst (analyst)")
def assign(case_id: str, body: Assign, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    _case(ctx, case_id)
    if body.assignee not in {u["username"] for u in ctx.state.users() if u["role"] != "viewer"}:
        raise HTTPException(422, f"{body.assignee!r} is not an analyst or admin")
    return _record(ctx, request, user.username, case_id, "assigned", {"assignee": body.assignee},
                   assignee=body.assignee)


@router.post("/cases/{case_id}/state", summary="Move the case and its incident: investigating, contained, closed "
                                               "(analyst)")
def set_state(case_id: str, body: CaseState, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    case = _case(ctx, case_id)
    if body.state not in STATES:
        raise HTTPException(422, f"state must be one of {', '.join(STATES)}")
    ctx.store.set_incident_state(case["incident_id"], body.state)
    return _record(ctx, request, user.username, case_id, "state",
                   {k: v for k, v in (("state", body.state), ("comment", body.comment)) if v}, state=body.state)


@router.post("/cases/{case_id}/evidence", summary="Add evidence: an alert, a flow, a flow's packets, a file (analyst)")
def add_evidence(case_id: str, body: Evidence, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    _case(ctx, case_id)
    if body.kind == "alert" and not ctx.store.search(Query("alerts", [Condition("alert_id", "eq", body.ref)],
                                                           limit=0)).total:
        raise HTTPException(422, f"no alert {body.ref}")
    if body.kind in ("flow", "pcap") and not (body.ref.isdigit() and ctx.store.search(
            Query("flows", [Condition("flow_id", "eq", int(body.ref))], limit=0)).total):
        raise HTTPException(422, f"no flow {body.ref}")
    if ctx.state.add_evidence(case_id, user.username, body.kind, body.ref, body.label):
        ctx.state.audit(user.username, "case_evidence", case_id, body.model_dump(), client_ip(request))
    return {"case_id": case_id, "evidence": ctx.state.case_work(case_id)["evidence"]}


@router.post("/cases/{case_id}/checks", summary="Tick (or untick) a playbook step (analyst)")
def check(case_id: str, body: Check, request: Request, user: Analyst, ctx: Ctx) -> dict[str, Any]:
    case = _case(ctx, case_id)
    steps = {s.key for b in playbooks() if b.id in case["playbooks"] for s in b.steps}
    if body.step not in steps:
        raise HTTPException(422, f"{body.step!r} is not a step of this case's playbooks")
    ctx.state.set_check(case_id, user.username, body.step, body.done)
    ctx.state.audit(user.username, "case_check", case_id, body.model_dump(), client_ip(request))
    return {"case_id": case_id, "step": body.step, "done": body.done}
