"""Overview (态势总览): warning level and why, posture score and trend, traffic and alerts over time, protocol
and 5G-plane mix, top targets and sources, the attack graph, recent critical alerts; live updates (SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from console.api.deps import Ctx, Range, Viewer
from ingest.store.api import GRADES, Condition, Query, Store, datetime_of_iso

router = APIRouter(prefix="/api", tags=["overview"])
OPEN_STATUSES = ["new", "acknowledged", "investigating"]
#: how much one open alert of a grade lowers the posture score (see :func:`posture`)
GRADE_WEIGHTS = {"red": 20.0, "orange": 8.0, "yellow": 3.0, "blue": 1.0}
BUCKETS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
MAX_BUCKETS = 120
EVENT_INTERVAL_S = 2.0


def posture(counts: dict[str, int]) -> float:
    """100 with nothing open, halving as the weighted open alerts reach 50 (one red alert costs 20 points of
    penalty, one blue alert 1): 100 / (1 + penalty / 50)."""
    penalty = sum(GRADE_WEIGHTS[g] * counts.get(g, 0) for g in GRADES)
    return round(100.0 / (1.0 + penalty / 50.0), 1)


def bucket_for(span_s: float) -> int:
    return next((b for b in BUCKETS_S if span_s / b <= MAX_BUCKETS), BUCKETS_S[-1])


def extent(store: Store) -> dict[str, str | None]:
    """First and last flow or alert: what "all data" means."""
    ends = [e for e in (store.extent("flows"), store.extent("alerts")) if e[0] is not None]
    if not ends:
        return {"first": None, "last": None}
    return {"first": min(str(e[0]) for e in ends), "last": max(str(e[1]) for e in ends)}


@router.get("/extent", summary="Time of the first and last stored flow")
def get_extent(_: Viewer, ctx: Ctx) -> dict[str, str | None]:
    return extent(ctx.store)


@router.get("/overview", summary="Everything the overview page shows, for one time range")
def overview(_: Viewer, ctx: Ctx, rng: Range) -> dict[str, Any]:
    store = ctx.store
    start, end = rng.start, rng.end
    if start is None or end is None:
        ext = extent(store)
        first, last = [datetime_of_iso(t) if t else None for t in (ext["first"], ext["last"])]
        span = ((end or last) - (start or first)).total_seconds() if (first and last) else 3600.0
    else:
        span = (end - start).total_seconds()
    bucket = bucket_for(max(span, 60.0))
    open_now = Condition("status", "in", OPEN_STATUSES)
    counts = {r["level"]: r["count"] for r in store.group(Query("alerts", [open_now], start=start, end=end), ("level",), 8)}
    grade = next((g for g in GRADES if counts.get(g)), "normal")
    why = [] if grade == "normal" else store.group(
        Query("alerts", [open_now, Condition("level", "eq", grade)], start=start, end=end), ("signature",), 3)
    histogram = store.histogram(start, end, bucket)
    trend = [{"bucket": b["bucket"], "score": posture({g: b[f"alerts_{g}"] for g in GRADES})} for b in histogram]
    return {
        "range": {"start": start.isoformat() if start else None, "end": end.isoformat() if end else None,
                  "bucket_s": bucket},
        "warning": {"level": grade, "open": {g: counts.get(g, 0) for g in GRADES}, "why": why},
        "posture": {"score": posture(counts), "trend": trend},
        "totals": {"flows": sum(b["flows"] for b in histogram), "bytes": sum(b["bytes"] for b in histogram),
                   "packets": sum(b["packets"] for b in histogram), "alerts": sum(b["alerts"] for b in histogram)},
        "histogram": histogram,
        "planes": store.plane_mix(start, end),
        "applications": store.top("applications", "bytes", start, end, 8),
        "top_targets": store.group(Query("alerts", start=start, end=end), ("dst_ip",), 8),
        "top_sources": store.group(Query("alerts", start=start, end=end), ("src_ip",), 8),
        "graph": store.group(Query("alerts", start=start, end=end), ("src_ip", "dst_ip"), 40),
        # the tracked posture (detection/posture.py): scopes by score, and the latest level changes with why
        "scopes": store.search(Query("posture", [Condition("level", "in", list(GRADES))], sort="-score", limit=10)).rows,
        "level_changes": store.search(Query("posture_changes", start=start, end=end, limit=10)).rows,
        # the trend forecast (detection/trend.py): every series' recent values and forecast, and its warnings
        "trend": store.search(Query("trend", sort="series", limit=100)).rows,
        "trend_warnings": store.search(Query("trend_warnings", start=start, end=end, limit=10)).rows,
        "recent_critical": store.search(Query("alerts", [Condition("level", "in", ["red", "orange"])], start=start, end=end,
                                              limit=10)).rows,
    }


def _fingerprint(store: Store) -> dict[str, Any]:
    newest = store.search(Query("alerts", limit=5))
    return {"alerts": newest.total, "flows": store.search(Query("flows", limit=0)).total,
            "newest_alerts": newest.rows}


@router.get("/events", summary="Server-sent events: 'update' whenever stored flows or alerts change",
            response_class=StreamingResponse)
async def events(request: Request, _: Viewer, ctx: Ctx) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        last: tuple[int, int] | None = None
        quiet = 0.0
        while not await request.is_disconnected():
            now = await run_in_threadpool(_fingerprint, ctx.store)
            key = (now["alerts"], now["flows"])
            if key != last:
                yield f"event: update\ndata: {json.dumps(now, default=str)}\n\n"
                last, quiet = key, 0.0
            elif quiet >= 15.0:
                yield ": keep-alive\n\n"
                quiet = 0.0
            await asyncio.sleep(EVENT_INTERVAL_S)
            quiet += EVENT_INTERVAL_S

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
