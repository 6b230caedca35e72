"""The SOC console: a FastAPI app over the store interface (REST API under /api, OpenAPI at /openapi.json) and a
static single-page front end (console/static, ECharts vendored: nothing loads from the internet)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from console.api import (
    alerts,
    assets,
    auth,
    cases,
    fiveg,
    hunt,
    incidents,
    intel,
    notifications,
    overview,
    privacy,
    reports,
    response,
    rules,
    sensors,
)
from console.api.deps import Context
from console.state import INITIAL_PASSWORD_FILE, ConsoleState
from ingest.store import DEFAULT_STORE, open_store
from ingest.store import store_uri as resolve
from ingest.store.api import Query, Store
from sensors.capture.seal import Keyring

STATIC = Path(__file__).resolve().parent / "static"
#: scripts only from this origin (no inline script, no eval): attacker-controlled strings shown on a page can
#: never run even if a rendering bug let one through; ECharts sets inline styles, hence style-src.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)  # reports set a stricter one of their own
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        if request.url.scheme == "https":
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response


def state_dir(store_uri: str) -> Path:
    """Where the console keeps users, audit and overrides: beside an embedded store, else the user's data dir."""
    if os.environ.get("LIAOWANG_CONSOLE_STATE"):
        return Path(os.environ["LIAOWANG_CONSOLE_STATE"]).expanduser()
    if store_uri.startswith(("http://", "https://")):
        return DEFAULT_STORE / "console"
    return Path(store_uri).expanduser() / "console"


def _warm(store: Store) -> None:
    """The dashboards' partial sums, computed while the first analyst signs in (not on their first page)."""
    try:
        store.warm()
    except Exception as exc:  # the pages compute what they need themselves; say why, once
        logging.getLogger("liaowang.console").warning("store warm-up failed: %s", exc)


def create_app(store: Store, state: ConsoleState, rule_paths: list[Path] | None = None,
               secure_cookies: bool = False, evidence_keyring: Keyring | None = None) -> FastAPI:
    app = FastAPI(title="Liaowang console API", version="1",
                  description="Everything the Liaowang SOC console shows. Sign in with POST /api/login (a session "
                              "cookie); requests that change state send the returned CSRF token as X-CSRF-Token. "
                              "Roles: viewer < analyst (triage) < admin (rules, users, audit).",
                  docs_url="/api/docs", redoc_url=None)
    app.state.ctx = Context(store, state, rule_paths, secure_cookies, evidence_keyring)
    app.add_middleware(SecurityHeaders)
    for module in (auth, overview, alerts, incidents, cases, intel, notifications, response, reports, hunt, fiveg, assets,
                   rules, sensors, privacy):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def serve(store_uri: str, host: str = "127.0.0.1", port: int = 8080, rule_paths: list[Path] | None = None,
          secure_cookies: bool = False, tls: tuple[Path, Path] | None = None) -> None:
    """Serve the console; ``tls``: (certificate chain, private key) PEM files (cookies are then Secure)."""
    import ssl

    import uvicorn

    if tls is not None:
        for path in tls:
            if not path.is_file():
                raise OSError(f"{path}: no such TLS certificate or key file")
        try:  # a wrong pair: one clear error now, not a traceback from the server thread
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*tls)
        except ssl.SSLError as exc:
            raise OSError(f"{tls[0]}, {tls[1]}: not a matching PEM certificate and key ({exc.reason})") from None
    keyring = Keyring.from_env()

    store_uri = resolve(store_uri)
    store = open_store(store_uri)
    store.search(Query("alerts", limit=0))  # a missing or unreachable store: one clear error now, not on every page
    threading.Thread(target=_warm, args=(store,), name="liaowang-warm", daemon=True).start()
    state = ConsoleState(state_dir(store_uri))
    generated = state.ensure_admin(os.environ.get("LIAOWANG_ADMIN_PASSWORD"))
    app = create_app(store, state, rule_paths, secure_cookies or tls is not None, keyring)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    scheme = "https" if tls else "http"
    print(f"Liaowang console: {scheme}://{shown}:{port}/  (store {store_uri})", flush=True)
    initial = state.directory / INITIAL_PASSWORD_FILE
    if generated:
        print(f"  sign in as 'admin' with password '{generated}' (generated on first run, also in {initial} until "
              f"you change it: liaowang user passwd admin --store {store_uri})", flush=True)
    elif initial.exists():
        print(f"  sign in as 'admin' with the password in {initial}", flush=True)
    else:
        print("  sign in with your console user (liaowang user add NAME --role analyst --store ... adds one)",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning",
                ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
