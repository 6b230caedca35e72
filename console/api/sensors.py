"""Sensors (探针): per sensor and source, packets/s, decode errors, drops, lag and when it was last seen."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter

from console.api.deps import Ctx, Viewer
from ingest.store.api import Query as StoreQuery
from ingest.store.api import ns_of_iso

router = APIRouter(prefix="/api", tags=["sensors"])


@router.get("/sensors", summary="Sensor health from the stored batch statistics")
def sensors(_: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    stats = ctx.store.search(StoreQuery("sensor_stats", sort="ts", limit=10_000)).rows
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in stats:
        row = out.setdefault((s["sensor"], s["source"]), {
            "sensor": s["sensor"], "source": s["source"], "batches": 0, "packets": 0, "bytes": 0,
            "decode_errors": 0, "drops": None, "first_seen": s.get("first_ts") or s["ts"], "last_seen": s["ts"]})
        row["batches"] += 1
        row["packets"] += s["packets"]
        row["bytes"] += s["bytes"]
        row["decode_errors"] += s["decode_errors"]
        if s.get("drops") is not None:  # a live capture's kernel drops; files drop nothing
            row["drops"] = (row["drops"] or 0) + s["drops"]
        row["last_seen"] = max(row["last_seen"], s["ts"])
        row["first_seen"] = min(row["first_seen"], s.get("first_ts") or s["ts"])
    now_ns = int(dt.datetime.now(dt.UTC).timestamp() * 1e9)
    for row in out.values():
        span_s = (ns_of_iso(row["last_seen"]) - ns_of_iso(row["first_seen"])) / 1e9
        row["packets_per_s"] = round(row["packets"] / span_s, 1) if span_s > 0 else None
        row["error_rate"] = round(row["decode_errors"] / row["packets"], 4) if row["packets"] else 0.0
        row["drop_rate"] = (round(row["drops"] / (row["packets"] + row["drops"]), 6)
                            if row["drops"] is not None and row["packets"] + row["drops"] else None)
        row["lag_s"] = round((now_ns - ns_of_iso(row["last_seen"])) / 1e9, 1)
    return sorted(out.values(), key=lambda r: r["last_seen"], reverse=True)
