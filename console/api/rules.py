"""Rules (规则): the loaded rules with the administrators' overrides; search, view the YAML, enable or disable,
tune thresholds (admin).  Overrides live in the console state's ``rule-overrides.json``, which ``liaowang replay
--store`` applies."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from console.api.deps import Admin, Ctx, Viewer, client_ip
from detection.rules.loader import load_rules, rule_source
from detection.rules.model import Rule

router = APIRouter(prefix="/api", tags=["rules"])


def _row(rule: Rule, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    o = overrides.get(rule.id, {})
    return {"id": rule.id, "title": rule.title, "status": rule.status, "level": rule.level, "grade": rule.grade,
            "source": rule.source, "category": rule.category, "tags": rule.tags, "description": rule.description,
            "path": rule.path, "enabled": o.get("enabled", True),
            "threshold": o.get("threshold", rule.aggregate.threshold), "window_s": o.get("window_s",
                                                                                         rule.aggregate.window_s),
            "default_threshold": rule.aggregate.threshold, "default_window_s": rule.aggregate.window_s,
            "aggregate": rule.aggregate.function, "overridden": bool(o)}


def _rules(ctx: Ctx) -> list[Rule]:
    return load_rules(ctx.rule_paths)


@router.get("/rules", summary="Rules with their current settings")
def rules(_: Viewer, ctx: Ctx, text: str | None = None, level: str | None = None) -> list[dict[str, Any]]:
    overrides = ctx.state.rule_overrides()
    out = [_row(r, overrides) for r in _rules(ctx)]
    if text:
        t = text.lower()
        out = [r for r in out if t in (r["title"] + " " + r["description"] + " " + " ".join(r["tags"]) + " "
                                       + r["id"]).lower()]
    if level:
        out = [r for r in out if r["level"] == level or r["grade"] == level]
    return out


def _find(ctx: Ctx, rule_id: str) -> Rule:
    found = next((r for r in _rules(ctx) if r.id == rule_id), None)
    if found is None:
        raise HTTPException(404, f"no rule {rule_id}")
    return found


@router.get("/rules/{rule_id}", summary="A rule with its YAML source")
def rule(rule_id: str, _: Viewer, ctx: Ctx) -> dict[str, Any]:
    found = _find(ctx, rule_id)
    return {**_row(found, ctx.state.rule_overrides()), "yaml": rule_source(found)}


class RuleChange(BaseModel):
    enabled: bool | None = None
    threshold: int | None = Field(default=None, ge=1, le=10_000_000)
    window_s: float | None = Field(default=None, gt=0, le=30 * 86400)


@router.patch("/rules/{rule_id}", summary="Enable or disable a rule, change its threshold or window (admin)")
def change_rule(rule_id: str, body: RuleChange, request: Request, admin: Admin, ctx: Ctx) -> dict[str, Any]:
    _find(ctx, rule_id)
    ctx.state.set_rule_override(rule_id, admin.username, body.enabled, body.threshold, body.window_s)
    ctx.state.audit(admin.username, "rule_change", rule_id, body.model_dump(exclude_none=True), client_ip(request))
    return rule(rule_id, admin, ctx)
