"""Threat intelligence (威胁情报): the feeds a sensor or replay matched, and what they matched (docs/intel.md)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException

from console.api.deps import Ctx, Range, Viewer
from ingest.store.api import Condition, StoreError
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["intel"])


@router.get("/intel", summary="Intelligence feeds (indicators per type, expired, skipped, last load, errors) and "
                              "their most matched indicators in the range")
def intel(_: Viewer, ctx: Ctx, rng: Range, top: int = 20) -> dict[str, Any]:
    try:
        feeds = ctx.store.search(StoreQuery("intel_feeds", limit=500, sort="feed")).rows
        matched = StoreQuery("alerts", [Condition("detector", "in", ["intel"])], start=rng.start, end=rng.end)
        groups = ctx.store.group(matched, ("group", "level"), n=min(max(top, 1), 200))
        levels = ctx.store.group(matched, ("level",))
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    for f in feeds:
        f["by_type"], f["skipped"] = json.loads(f["by_type"] or "{}"), json.loads(f["skipped"] or "{}")
    matches = []
    for g in groups:
        values = dict(part.split("=", 1) for part in (g["group"] or "").split(",") if "=" in part)
        matches.append({"feed": values.get("intel_feed"), "indicator": values.get("intel_indicator"),
                        "host": values.get("src_ip"), "level": g["level"], "alerts": g["count"]})
    return {"feeds": feeds, "matches": matches, "by_level": {r["level"]: r["count"] for r in levels}}
