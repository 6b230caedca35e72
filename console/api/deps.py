"""What every route shares: the store and console state, the signed-in user and role checks, CSRF, time ranges."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request

from console.state import ConsoleState, User
from ingest.store.api import Store

COOKIE = "liaowang_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Context:
    store: Store
    state: ConsoleState
    rule_paths: list[Path] | None = None  # None: the bundled rules
    secure_cookies: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(context)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "-"


def session_user(request: Request, ctx: Ctx) -> User:
    """The signed-in user (401 otherwise); state-changing requests must echo the session's CSRF token (403)."""
    token = request.cookies.get(COOKIE)
    found = ctx.state.session(token) if token else None
    if found is None:
        raise HTTPException(401, "sign in first")
    user, csrf = found
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != csrf:
        raise HTTPException(403, "missing or wrong CSRF token")
    return user


def require(role: str) -> Callable[..., User]:
    def check(user: Annotated[User, Depends(session_user)]) -> User:
        if not user.can(role):
            raise HTTPException(403, f"needs the {role} role")
        return user
    return check


Viewer = Annotated[User, Depends(require("viewer"))]
Analyst = Annotated[User, Depends(require("analyst"))]
Admin = Annotated[User, Depends(require("admin"))]


def _time(value: str | None, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise HTTPException(422, f"{name}: not an ISO-8601 time: {value!r}") from e
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class TimeRange:
    start: dt.datetime | None
    end: dt.datetime | None


def time_range(start: Annotated[str | None, Query(description="ISO-8601, inclusive")] = None,
               end: Annotated[str | None, Query(description="ISO-8601, exclusive")] = None) -> TimeRange:
    return TimeRange(_time(start, "start"), _time(end, "end"))


Range = Annotated[TimeRange, Depends(time_range)]
