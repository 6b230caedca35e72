"""Signing in and out, users and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from console.api.deps import COOKIE, Admin, Ctx, Viewer, client_ip
from console.state import ROLES, SESSION_TTL_S, StateError

router = APIRouter(prefix="/api", tags=["auth"])
class Login(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=256)


class NewUser(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(min_length=10, max_length=256)
    role: str = Field(pattern="^(viewer|analyst|admin)$")


@router.post("/login", summary="Sign in: sets the session cookie; returns the user and the CSRF token")
def login(body: Login, request: Request, response: Response, ctx: Ctx) -> dict[str, Any]:
    ip = client_ip(request)
    keys = (f"ip:{ip}", f"user:{body.username}")
    wait = ctx.limiter.retry_after(*keys)
    if wait:
        ctx.state.audit(body.username, "login_throttled", client_ip=ip)
        raise HTTPException(429, "too many failed sign-ins: try again later", headers={"Retry-After": str(wait)})
    user = ctx.state.verify(body.username, body.password)
    if user is None:
        ctx.limiter.fail(*keys)
        ctx.state.audit(body.username, "login_failed", client_ip=ip)
        raise HTTPException(401, "wrong user name or password")
    ctx.limiter.clear(f"user:{body.username}")
    token, csrf = ctx.state.open_session(user)
    secure = ctx.secure_cookies or request.url.scheme == "https"
    response.set_cookie(COOKIE, token, max_age=SESSION_TTL_S, httponly=True, samesite="strict", secure=secure,
                        path="/")
    ctx.state.audit(user.username, "login", client_ip=ip)
    return {"username": user.username, "role": user.role, "csrf": csrf}


@router.post("/logout", summary="Sign out: ends the session")
def logout(request: Request, response: Response, user: Viewer, ctx: Ctx) -> dict[str, bool]:
    token = request.cookies.get(COOKIE)
    if token:
        ctx.state.close_session(token)
    response.delete_cookie(COOKIE, path="/")
    ctx.state.audit(user.username, "logout", client_ip=client_ip(request))
    return {"ok": True}


@router.get("/me", summary="The signed-in user, role and CSRF token")
def me(request: Request, user: Viewer, ctx: Ctx) -> dict[str, Any]:
    found = ctx.state.session(request.cookies.get(COOKIE, ""))
    return {"username": user.username, "role": user.role, "csrf": found[1] if found else None, "roles": ROLES}


@router.get("/users", summary="Users and roles (admin)")
def users(_: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    return ctx.state.users()


@router.post("/users", summary="Add a user (admin)")
def add_user(body: NewUser, request: Request, admin: Admin, ctx: Ctx) -> dict[str, bool]:
    try:
        ctx.state.add_user(body.username, body.password, body.role)
    except StateError as e:
        raise HTTPException(409, str(e)) from e
    ctx.state.audit(admin.username, "user_add", body.username, {"role": body.role}, client_ip(request))
    return {"ok": True}


@router.get("/audit", summary="The audit log of analysts' actions, newest first (admin)")
def audit(_: Admin, ctx: Ctx, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    rows, total = ctx.state.audit_log(min(max(limit, 0), 1000), max(offset, 0))
    return {"rows": rows, "total": total}
