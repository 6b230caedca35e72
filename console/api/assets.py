"""Assets (资产): hosts and NFs found passively, with their services, banners, exposures and a risk score."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from console.api.deps import Ctx, Range, Viewer
from ingest.store.api import GRADES, Condition, StoreError
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["assets"])
#: categories of alerts that are findings about the asset itself (what it exposes), not attacks on it
EXPOSURE_TAG = "liaowang.exposure"
GRADE_RISK = {"red": 40.0, "orange": 20.0, "yellow": 8.0, "blue": 3.0}


def risk(exposures: dict[str, int], attacks: dict[str, int]) -> float:
    """0-100: exposures weigh fully, alerts against the asset half; capped."""
    score = sum(GRADE_RISK[g] * n for g, n in exposures.items()) + 0.5 * sum(GRADE_RISK[g] * n
                                                                            for g, n in attacks.items())
    return round(min(100.0, score), 1)


@router.get("/assets", summary="Addresses seen in flows with traffic, NF roles, services, exposures and risk")
def assets(_: Viewer, ctx: Ctx, rng: Range, ip: str | None = None, sort: str | None = None, limit: int = 50,
           offset: int = 0) -> dict[str, Any]:
    try:
        page = ctx.store.search(StoreQuery("assets", ip=ip or None, start=rng.start, end=rng.end, sort=sort or None,
                                           limit=limit, offset=offset))
    except StoreError as e:
        raise HTTPException(422, str(e)) from e
    ips = [a["ip"] for a in page.rows]
    if not ips:
        return {"rows": [], "total": page.total}
    services: dict[str, list[dict[str, Any]]] = {}
    for g in ctx.store.group(StoreQuery("flows", [Condition("dst_ip", "in", ips)], start=rng.start, end=rng.end),
                             ("dst_ip", "dst_port", "ip_proto", "application_hint"), 2000):
        services.setdefault(g.pop("dst_ip"), []).append(g)
    found: dict[str, dict[str, Any]] = {}
    for side in ("src_ip", "dst_ip"):
        q = StoreQuery("alerts", [Condition(side, "in", ips)], start=rng.start, end=rng.end, limit=10_000)
        for f in ctx.store.search(q).rows:
            found[f["alert_id"]] = f
    rows = []
    for a in page.rows:
        addr = a["ip"]
        mine = [f for f in found.values() if addr in (f["src_ip"], f["dst_ip"])]
        exposures = [f for f in mine if EXPOSURE_TAG in (f.get("tags") or [])]
        attacks = [f for f in mine if f not in exposures and f["dst_ip"] == addr]
        rows.append({**a, "services": services.get(addr, [])[:12],
                     "exposures": [{"signature": f["signature"], "level": f["level"], "detail": f.get("detail"),
                                    "alert_id": f["alert_id"]} for f in exposures],
                     "alerts_against": len(attacks),
                     "risk": risk({g: sum(f["level"] == g for f in exposures) for g in GRADES},
                                  {g: sum(f["level"] == g for f in attacks) for g in GRADES})})
    return {"rows": rows, "total": page.total}
