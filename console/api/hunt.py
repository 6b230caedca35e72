"""Hunt (狩猎): flow search with the hunt query language (console/hunt.py), a flow's detail and its packets."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from console.api.alerts import flow_pcap
from console.api.deps import Ctx, Range, Viewer
from console.hunt import ALIASES, HuntError, parse
from ingest.store.api import SCHEMAS, Condition, StoreError, column_list
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["hunt"])


@router.get("/flows", summary="Flows matching a hunt query (e.g. `ip=10.45.0.0/16 dst_port=443 sni~example`)")
def hunt(_: Viewer, ctx: Ctx, rng: Range, q: Annotated[str, Query(max_length=2000)] = "", sort: str | None = None,
         limit: int = 50, offset: int = 0,
         fields: Annotated[str, Query(max_length=4000, description="columns of each row, comma-separated "
                                                                    "(flow_id always); all when empty")] = "",
         ) -> dict[str, Any]:
    try:
        h = parse(q)
        where = list(h.where)
        if h.subscriber:
            sessions = ctx.store.search(StoreQuery("sessions", [Condition("subscriber", "eq", h.subscriber)],
                                                   limit=1000)).rows
            where.append(Condition("session_id", "in", [s["session_id"] for s in sessions]))
        page = ctx.store.search(StoreQuery("flows", where, ip=h.ip, text=h.text, start=rng.start, end=rng.end,
                                           sort=sort or None, limit=limit, offset=offset,
                                           columns=column_list(fields)))
    except (HuntError, StoreError) as e:
        raise HTTPException(422, str(e)) from e
    return {"rows": page.rows, "total": page.total}


@router.get("/hunt/fields", summary="Fields and short names the hunt language knows")
def fields(_: Viewer) -> dict[str, Any]:
    return {"fields": SCHEMAS["flows"].names, "aliases": ALIASES, "special": ["ip", "supi", "subscriber"]}


@router.get("/flows/{flow_id}", summary="A flow with its alerts and 5G session")
def flow(flow_id: int, _: Viewer, ctx: Ctx) -> dict[str, Any]:
    found = ctx.store.flow(flow_id)
    if found is None:
        raise HTTPException(404, f"no flow {flow_id}")
    return found


@router.get("/flows/{flow_id}/pcap", summary="The flow's packets as a pcap", response_class=Response)
def pcap(flow_id: int, request: Request, user: Viewer, ctx: Ctx) -> Response:
    return flow_pcap(ctx, flow_id, user.username, request)
