"""Notifications (通知): every message the notifier sent or tried to send, and its delivery (docs/notifications.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from console.api.deps import Ctx, Range, Viewer, csv_values
from ingest.store.api import Condition, StoreError
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["notifications"])
FILTERS = ("status", "channel", "kind", "level")


@router.get("/notifications", summary="Notifications and their delivery, filtered (status, channel, kind, level), "
                                      "newest first; with counts per status")
def list_notifications(_: Viewer, ctx: Ctx, rng: Range, status: str | None = None, channel: str | None = None,
                       kind: str | None = None, level: str | None = None, text: str | None = None,
                       limit: int = 50, offset: int = 0) -> dict[str, Any]:
    given = dict(zip(FILTERS, (status, channel, kind, level)))
    where = [Condition(column, "in", values) for column, v in given.items() if (values := csv_values(v))]
    try:
        q = StoreQuery("notifications", where, text=text or None, start=rng.start, end=rng.end,
                       limit=min(max(limit, 1), 500), offset=max(offset, 0))
        page = ctx.store.search(q)
        by_status = ctx.store.group(StoreQuery("notifications", [c for c in where if c.field != "status"],
                                               text=text or None, start=rng.start, end=rng.end), ("status",))
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    return {"rows": page.rows, "total": page.total, "by_status": {r["status"]: r["count"] for r in by_status}}


@router.get("/notifications/settings", summary="The routes in force (who is told about what, where, and when it "
                                               "escalates) and each channel's deliveries in the range")
def notification_settings(_: Viewer, ctx: Ctx, rng: Range) -> dict[str, Any]:
    try:
        stored = ctx.store.search(StoreQuery("notify_routes", limit=500, sort="position")).rows
        sent = ctx.store.group(StoreQuery("notifications", start=rng.start, end=rng.end), ("channel", "status"),
                               n=1000)
        failures = ctx.store.search(StoreQuery("notifications", [Condition("status", "in", ["failed", "retrying"])],
                                               start=rng.start, end=rng.end, limit=200, sort="-created")).rows
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    # the latest version of each settings file: a route removed from it keeps its older row
    latest: dict[str, Any] = {}
    for r in stored:
        latest[r["source"]] = max(latest.get(r["source"], r["file_mtime"]), r["file_mtime"])
    routes = [r for r in stored if r["file_mtime"] == latest[r["source"]]]
    channels: dict[str, dict[str, Any]] = {}
    for r in routes:
        for c in r["channels"]:
            channels.setdefault(c["name"], {**c, "routes": [], "by_status": {}, "last_error": None})["routes"].append(
                r["route"])
    for g in sent:
        if g["channel"] in channels:
            channels[g["channel"]]["by_status"][g["status"]] = g["count"]
    for f in failures:  # newest first: the first failure seen per channel is its latest
        c = channels.get(f["channel"])
        if c is not None and c["last_error"] is None and f["last_error"]:
            c["last_error"] = {"at": f["created"], "error": f["last_error"]}
    return {"routes": routes, "channels": sorted(channels.values(), key=lambda c: c["name"]),
            "loaded_at": max((r["loaded_at"] for r in routes), default=None),
            "errors": sorted({r["error"] for r in routes if r["error"]})}
