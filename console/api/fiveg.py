"""5G (5G 会话): sessions, the NF inventory, and a topology of NFs and who talks to whom."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException

from console.api.deps import Ctx, Range, Viewer
from console.hunt import HuntError, parse
from ingest.store.api import Condition, StoreError
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["5g"])
#: flows between NFs are the control and user planes
TOPOLOGY_PLANES = ["N2", "N3", "N4", "SBI", "S1/S11/S5", "Diameter"]


@router.get("/sessions", summary="PDU sessions / bearers with subscriber token, DNN, S-NSSAI, gNB, UPF, TEIDs")
def sessions(_: Viewer, ctx: Ctx, rng: Range, ip: str | None = None, text: str | None = None,
             state: str | None = None, sort: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    where = [Condition("state", "eq", state)] if state else []
    try:
        page = ctx.store.search(StoreQuery("sessions", where, ip=ip or None, text=text or None, start=rng.start,
                                           end=rng.end, sort=sort or None, limit=limit, offset=offset))
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    # alerts carry their session as JSON: count them per session in one grouping
    per_session: dict[str, int] = {}
    for g in ctx.store.group(StoreQuery("alerts", [Condition("session", "contains", "session_id")]), ("session",),
                             10_000):
        try:
            sid = json.loads(g["session"]).get("session_id")
        except (ValueError, AttributeError):
            continue
        per_session[sid] = per_session.get(sid, 0) + g["count"]
    return {"rows": [{**r, "alerts": per_session.get(r["session_id"], 0)} for r in page.rows], "total": page.total}


@router.get("/inventory", summary="Network functions found passively (AMF, SMF, UPF, gNB, NRF...)")
def inventory(_: Viewer, ctx: Ctx, sort: str | None = None, limit: int = 200, offset: int = 0) -> dict[str, Any]:
    page = ctx.store.search(StoreQuery("nf_inventory", sort=sort or "ip", limit=limit, offset=offset))
    return {"rows": page.rows, "total": page.total}


@router.get("/topology", summary="NFs as nodes, control/user-plane flows between addresses as edges")
def topology(_: Viewer, ctx: Ctx, rng: Range, q: str = "") -> dict[str, Any]:
    try:
        h = parse(q)
    except HuntError as e:
        raise HTTPException(422, str(e)) from e
    where = [Condition("plane", "in", TOPOLOGY_PLANES), *h.where]
    edges = ctx.store.group(StoreQuery("flows", where, ip=h.ip, start=rng.start, end=rng.end),
                            ("src_ip", "dst_ip", "plane"), 300)
    roles: dict[str, list[str]] = {}
    for nf in ctx.store.search(StoreQuery("nf_inventory", limit=10_000)).rows:
        roles.setdefault(nf["ip"], []).append(nf["role"])
    nodes = sorted({e["src_ip"] for e in edges} | {e["dst_ip"] for e in edges} | set(roles))
    return {"nodes": [{"ip": n, "roles": sorted(roles.get(n, []))} for n in nodes if n],
            "edges": [{"source": e["src_ip"], "target": e["dst_ip"], "plane": e["plane"], "flows": e["count"]}
                      for e in edges if e["src_ip"] and e["dst_ip"]]}
