"""What every route shares: the store and console state, the signed-in user and role checks, CSRF, time ranges."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from console.state import ConsoleState, User
from ingest.store.api import Store
from sensors.capture.seal import Keyring

COOKIE = "liaowang_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


#: failed sign-ins allowed per client address and per user name within the window, then 429
MAX_FAILURES, FAILURE_WINDOW_S = 5, 300.0


class RateLimiter:
    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> int:
        """Seconds until another attempt is allowed (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for k in keys:
                q = self._failures.get(k)
                while q and now - q[0] > FAILURE_WINDOW_S:
                    q.popleft()
                if q and len(q) >= MAX_FAILURES:
                    wait = max(wait, FAILURE_WINDOW_S - (now - q[0]))
        return int(wait) + (1 if wait else 0)

    def fail(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.setdefault(k, deque()).append(time.monotonic())

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


@dataclass
class Context:
    store: Store
    state: ConsoleState
    rule_paths: list[Path] | None = None  # None: the bundled rules
    secure_cookies: bool = False
    evidence_keyring: Keyring | None = None  # opens sealed retained packets
    limiter: RateLimiter = field(default_factory=RateLimiter)


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


def iso_time(value: str | None, name: str) -> dt.datetime | None:
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
    return TimeRange(iso_time(start, "start"), iso_time(end, "end"))


Range = Annotated[TimeRange, Depends(time_range)]


def csv_values(value: str | None) -> list[str]:
    """A comma-separated query parameter as its values (filters: level=red,orange)."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]
