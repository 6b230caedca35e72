"""The console's own state, beside the store: users, login sessions, the audit log, triage notes and rule
overrides, in one SQLite file (``console.sqlite``).

The store holds what sensors saw; this holds what analysts did.  SQLite, because
it is in the standard library, is safe across the server's threads and processes,
and survives a reload of the store (an alert's triage is keyed by its
deterministic id).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("viewer", "analyst", "admin")
SESSION_TTL_S = 12 * 3600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
                                  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
                                     expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, username TEXT,
                                  action TEXT NOT NULL, target TEXT, detail TEXT, client_ip TEXT);
CREATE TABLE IF NOT EXISTS triage (alert_id TEXT PRIMARY KEY, status TEXT, assignee TEXT, updated_ms INTEGER,
                                   updated_by TEXT);
CREATE TABLE IF NOT EXISTS comments (id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, ts_ms INTEGER,
                                     username TEXT, body TEXT);
CREATE TABLE IF NOT EXISTS rule_overrides (rule_id TEXT PRIMARY KEY, enabled INTEGER, threshold INTEGER,
                                           window_s REAL, updated_ms INTEGER, updated_by TEXT);
CREATE TABLE IF NOT EXISTS cases (id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT UNIQUE NOT NULL,
                                  title TEXT, state TEXT NOT NULL, assignee TEXT, playbooks TEXT NOT NULL,
                                  created_ms INTEGER NOT NULL, created_by TEXT, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS case_events (id INTEGER PRIMARY KEY AUTOINCREMENT, case_id INTEGER NOT NULL,
                                        ts_ms INTEGER NOT NULL, username TEXT, kind TEXT NOT NULL, body TEXT);
CREATE TABLE IF NOT EXISTS case_evidence (case_id INTEGER NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL,
                                          label TEXT, added_ms INTEGER NOT NULL, added_by TEXT,
                                          PRIMARY KEY (case_id, kind, ref));
CREATE TABLE IF NOT EXISTS case_checks (case_id INTEGER NOT NULL, step TEXT NOT NULL, done INTEGER NOT NULL,
                                        updated_ms INTEGER NOT NULL, updated_by TEXT, PRIMARY KEY (case_id, step));
"""
#: what a case's timeline records of analysts' work (besides what detection and notifications add)
CASE_EVENTS = ("opened", "note", "state", "assigned", "evidence", "check")
EVIDENCE_KINDS = ("alert", "flow", "pcap", "file")
#: rule overrides as ``liaowang replay`` reads them (detection.rules.loader.apply_overrides)
OVERRIDES_FILE = "rule-overrides.json"
#: the generated first-run admin password (mode 0600), deleted when the password is changed
INITIAL_PASSWORD_FILE = "initial-admin-password"


class StateError(Exception):
    """A bad user name, role or password: a message for the user."""


@dataclass(frozen=True)
class User:
    username: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def case_key(case_id: str) -> int | None:
    """``CASE-000042`` -> 42 (None: not a case id)."""
    head, _, number = case_id.partition("-")
    return int(number) if head == "CASE" and number.isdigit() else None


def _case_id(key: int) -> str:
    return f"CASE-{key:06d}"


def describe_event(event: dict[str, Any]) -> str:
    """A case event (``case_work``) in a line: its note, state and comment, assignee, step or evidence."""
    body = event["body"] or {}
    if event["kind"] == "opened":
        return "playbooks: " + ", ".join(body.get("playbooks", []))
    if event["kind"] == "check":
        return f"{body['step']}: {'done' if body['done'] else 'not done'}"
    if event["kind"] == "evidence":
        return f"{body['kind']} {body['ref']}" + (f" ({body['label']})" if body.get("label") else "")
    if event["kind"] == "state":
        return body["state"] + (f": {body['comment']}" if body.get("comment") else "")
    if event["kind"] == "assigned":
        return body["assignee"]
    return str(body.get("text", ""))


def now_ms() -> int:
    return int(time.time() * 1000)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleState:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "console.sqlite"
        self._hasher = PasswordHasher()
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30)
            try:
                with db:  # one transaction
                    yield db
            finally:
                db.close()

    # -- users --
    def add_user(self, username: str, password: str, role: str) -> None:
        if role not in ROLES:
            raise StateError(f"role must be one of {', '.join(ROLES)}")
        if not username or not username.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise StateError("a user name is letters, digits, '.', '-' and '_'")
        if len(password) < 10:
            raise StateError("a password has at least 10 characters")
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise StateError(f"user {username!r} exists (liaowang user passwd to change the password)")
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (username, self._hasher.hash(password), role, now_ms()))

    def set_password(self, username: str, password: str) -> None:
        if len(password) < 10:
            raise StateError("a password has at least 10 characters")
        with self._db() as db:
            if not db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                              (self._hasher.hash(password), username)).rowcount:
                raise StateError(f"no user {username!r}")
            db.execute("DELETE FROM sessions WHERE username = ?", (username,))
        if username == "admin":
            (self.directory / INITIAL_PASSWORD_FILE).unlink(missing_ok=True)

    def users(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [{"username": u, "role": r, "created_ms": c}
                    for u, r, c in db.execute("SELECT username, role, created_ms FROM users ORDER BY username")]

    def has_users(self) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def ensure_admin(self, password: str | None) -> str | None:
        """On first run, create ``admin`` with ``password`` or a generated one; a generated one is returned (to
        print once) and kept, readable by this account only, in :data:`INITIAL_PASSWORD_FILE` until changed."""
        if self.has_users():
            return None
        generated = password or secrets.token_urlsafe(12)
        self.add_user("admin", generated, "admin")
        if password:
            return None
        path = self.directory / INITIAL_PASSWORD_FILE
        path.touch(mode=0o600)
        path.write_text(generated + "\n")
        return generated

    def verify(self, username: str, password: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT password_hash, role FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            self._hasher.hash(password)  # as slow as a wrong password: no user enumeration by timing
            return None
        try:
            self._hasher.verify(row[0], password)
        except (VerificationError, InvalidHashError):
            return None
        return User(username, row[1])

    # -- login sessions --
    def open_session(self, user: User) -> tuple[str, str]:
        """A new session: (cookie token, CSRF token).  Only the token's hash is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires_ms < ?", (now_ms(),))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                       (_sha256(token), user.username, csrf, now_ms() + SESSION_TTL_S * 1000))
        return token, csrf

    def session(self, token: str) -> tuple[User, str] | None:
        """The user and CSRF token of a live session."""
        with self._db() as db:
            row = db.execute("""SELECT u.username, u.role, s.csrf FROM sessions s JOIN users u USING (username)
                                WHERE s.token_sha256 = ? AND s.expires_ms > ?""", (_sha256(token), now_ms())).fetchone()
        return (User(row[0], row[1]), row[2]) if row else None

    def close_session(self, token: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha256(token),))

    # -- audit --
    def audit(self, user: str | None, action: str, target: str | None = None, detail: Any = None,
              client_ip: str | None = None) -> None:
        with self._db() as db:
            db.execute("INSERT INTO audit (ts_ms, username, action, target, detail, client_ip) VALUES (?,?,?,?,?,?)",
                       (now_ms(), user, action, target, None if detail is None else json.dumps(detail,
                                                                                               ensure_ascii=False),
                        client_ip))

    def audit_log(self, limit: int = 100, offset: int = 0, target: str | None = None) -> tuple[list[dict[str, Any]], int]:
        where, params = ("WHERE target = ?", [target]) if target else ("", [])
        with self._db() as db:
            total = db.execute(f"SELECT count(*) FROM audit {where}", params).fetchone()[0]
            rows = db.execute(f"""SELECT id, ts_ms, username, action, target, detail, client_ip FROM audit {where}
                                  ORDER BY id DESC LIMIT ? OFFSET ?""", [*params, limit, offset]).fetchall()
        keys = ("id", "ts_ms", "username", "action", "target", "detail", "client_ip")
        return [{**dict(zip(keys, r)), "detail": json.loads(r[5]) if r[5] else None} for r in rows], int(total)

    # -- triage --
    def set_triage(self, alert_ids: list[str], user: str, status: str | None, assignee: str | None,
                   comment: str | None) -> None:
        with self._db() as db:
            for alert_id in alert_ids:
                db.execute("""INSERT INTO triage VALUES (?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET
                              status = coalesce(excluded.status, status), assignee = coalesce(excluded.assignee,
                              assignee), updated_ms = excluded.updated_ms, updated_by = excluded.updated_by""",
                           (alert_id, status, assignee, now_ms(), user))
                if comment:
                    db.execute("INSERT INTO comments (alert_id, ts_ms, username, body) VALUES (?, ?, ?, ?)",
                               (alert_id, now_ms(), user, comment))

    def triage(self, alert_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not alert_ids:
            return {}
        marks = ",".join("?" * len(alert_ids))
        with self._db() as db:
            rows = db.execute(f"SELECT alert_id, assignee, updated_ms, updated_by FROM triage WHERE alert_id IN ({marks})",
                              alert_ids).fetchall()
        return {r[0]: {"assignee": r[1], "updated_ms": r[2], "updated_by": r[3]} for r in rows}

    def comments(self, alert_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT ts_ms, username, body FROM comments WHERE alert_id = ? ORDER BY id",
                              (alert_id,)).fetchall()
        return [{"ts_ms": t, "username": u, "body": b} for t, u, b in rows]

    # -- rule overrides --
    def set_rule_override(self, rule_id: str, user: str, enabled: bool | None = None, threshold: int | None = None,
                          window_s: float | None = None) -> None:
        with self._db() as db:
            db.execute("""INSERT INTO rule_overrides VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id) DO UPDATE SET
                          enabled = coalesce(excluded.enabled, enabled), threshold = coalesce(excluded.threshold,
                          threshold), window_s = coalesce(excluded.window_s, window_s),
                          updated_ms = excluded.updated_ms, updated_by = excluded.updated_by""",
                       (rule_id, None if enabled is None else int(enabled), threshold, window_s, now_ms(), user))
        overrides = self.rule_overrides()
        tmp = self.directory / (OVERRIDES_FILE + ".tmp")
        tmp.write_text(json.dumps(overrides, indent=1, sort_keys=True))
        tmp.replace(self.directory / OVERRIDES_FILE)

    def rule_overrides(self) -> dict[str, dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT rule_id, enabled, threshold, window_s FROM rule_overrides").fetchall()
        return {r: {k: v for k, v in (("enabled", None if e is None else bool(e)), ("threshold", t),
                                      ("window_s", w)) if v is not None} for r, e, t, w in rows}

    # -- cases: an incident taken up, with its timeline, evidence and checklist --
    def open_case(self, incident_id: str, title: str, user: str, playbooks: list[str]) -> tuple[dict[str, Any], bool]:
        """The incident's case, opened now if it has none; and whether it was opened now."""
        with self._db() as db:
            row = db.execute("SELECT id FROM cases WHERE incident_id = ?", (incident_id,)).fetchone()
            if row is None:
                t = now_ms()
                key = db.execute("""INSERT INTO cases (incident_id, title, state, assignee, playbooks, created_ms,
                                    created_by, updated_ms) VALUES (?, ?, 'investigating', ?, ?, ?, ?, ?)""",
                                 (incident_id, title, user, json.dumps(playbooks), t, user, t)).lastrowid
                assert key is not None
                db.execute("INSERT INTO case_events (case_id, ts_ms, username, kind, body) VALUES (?, ?, ?, ?, ?)",
                           (key, t, user, "opened", json.dumps({"playbooks": playbooks}, ensure_ascii=False)))
        case = self.case_of_incident(incident_id)
        assert case is not None
        return case, row is None

    _CASE_COLUMNS = "id, incident_id, title, state, assignee, playbooks, created_ms, created_by, updated_ms"

    @staticmethod
    def _case_row(r: tuple[Any, ...]) -> dict[str, Any]:
        keys = ("case_id", "incident_id", "title", "state", "assignee", "playbooks", "created_ms", "created_by",
                "updated_ms")
        row = dict(zip(keys, r))
        row["case_id"], row["playbooks"] = _case_id(r[0]), json.loads(r[5])
        return row

    def case(self, case_id: str) -> dict[str, Any] | None:
        key = case_key(case_id)
        with self._db() as db:
            r = db.execute(f"SELECT {self._CASE_COLUMNS} FROM cases WHERE id = ?", (key,)).fetchone()
        return None if r is None else self._case_row(r)

    def case_of_incident(self, incident_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            r = db.execute(f"SELECT {self._CASE_COLUMNS} FROM cases WHERE incident_id = ?", (incident_id,)).fetchone()
        return None if r is None else self._case_row(r)

    def cases(self, state: list[str] | None = None, assignee: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Cases, the latest changed first, with how many checklist steps are done."""
        where, params = [], []
        if state:
            where.append(f"state IN ({','.join('?' * len(state))})")
            params += state
        if assignee:
            where.append("assignee = ?")
            params.append(assignee)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._db() as db:
            total = db.execute(f"SELECT count(*) FROM cases {clause}", params).fetchone()[0]
            rows = db.execute(f"""SELECT {self._CASE_COLUMNS}, (SELECT count(*) FROM case_checks c WHERE c.case_id = cases.id
                                  AND c.done = 1) FROM cases {clause} ORDER BY updated_ms DESC, id DESC LIMIT ? OFFSET ?""",
                              [*params, limit, offset]).fetchall()
        return [{**self._case_row(r[:9]), "steps_done": r[9]} for r in rows], int(total)

    def case_event(self, case_id: str, user: str, kind: str, body: dict[str, Any],
                   state: str | None = None, assignee: str | None = None) -> None:
        """Record analysts' work on a case (and move its state or assignee with it)."""
        key, t = case_key(case_id), now_ms()
        with self._db() as db:
            db.execute("INSERT INTO case_events (case_id, ts_ms, username, kind, body) VALUES (?, ?, ?, ?, ?)",
                       (key, t, user, kind, json.dumps(body, ensure_ascii=False)))
            db.execute("UPDATE cases SET updated_ms = ?, state = coalesce(?, state), assignee = coalesce(?, assignee)"
                       " WHERE id = ?", (t, state, assignee, key))

    def add_evidence(self, case_id: str, user: str, kind: str, ref: str, label: str | None) -> bool:
        """Evidence for a case; False when it was there already."""
        with self._db() as db:
            added = db.execute("INSERT OR IGNORE INTO case_evidence VALUES (?, ?, ?, ?, ?, ?)",
                               (case_key(case_id), kind, ref, label, now_ms(), user)).rowcount
        if added:
            self.case_event(case_id, user, "evidence", {"kind": kind, "ref": ref, "label": label})
        return bool(added)

    def set_check(self, case_id: str, user: str, step: str, done: bool) -> None:
        with self._db() as db:
            db.execute("""INSERT INTO case_checks VALUES (?, ?, ?, ?, ?) ON CONFLICT (case_id, step) DO UPDATE SET
                          done = excluded.done, updated_ms = excluded.updated_ms, updated_by = excluded.updated_by""",
                       (case_key(case_id), step, int(done), now_ms(), user))
        self.case_event(case_id, user, "check", {"step": step, "done": done})

    def case_work(self, case_id: str) -> dict[str, Any]:
        """A case's events (oldest first), evidence and checked steps."""
        key = case_key(case_id)
        with self._db() as db:
            events = db.execute("SELECT ts_ms, username, kind, body FROM case_events WHERE case_id = ? ORDER BY id",
                                (key,)).fetchall()
            evidence = db.execute("""SELECT kind, ref, label, added_ms, added_by FROM case_evidence WHERE case_id = ?
                                     ORDER BY added_ms, kind, ref""", (key,)).fetchall()
            checks = db.execute("SELECT step, done, updated_ms, updated_by FROM case_checks WHERE case_id = ?",
                                (key,)).fetchall()
        return {"events": [{"ts_ms": t, "username": u, "kind": k, "body": json.loads(b) if b else None}
                           for t, u, k, b in events],
                "evidence": [dict(zip(("kind", "ref", "label", "added_ms", "added_by"), r)) for r in evidence],
                "checks": {step: {"done": bool(d), "updated_ms": t, "updated_by": u} for step, d, t, u in checks}}
