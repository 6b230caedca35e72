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
