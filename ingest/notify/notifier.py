"""The notifier: routes alerts and incidents to channels, deduplicated, rate-limited, retried and escalated.

It takes detection's results as they come (``offer``; it never blocks the
pipeline) and keeps a record of every notification and its delivery
(``drain``: rows for the store's ``notifications`` table; and a JSON-lines log).

- **Routes** pick rows by kind (alert, incident, trend), level, category (a trend
  warning: its series) and asset (``config.py``).
  An incident is notified when it first reaches a route's levels and again
  when its level rises; an alert once: at its early warning (when its count
  first reaches the threshold) if it had one, else when it is final.
- **Dedup**: the same subject (incident and level, or rule and group) goes to
  a channel at most once per ``dedup_s``, whatever routes or re-deliveries
  bring it again.
- **Rate limit** per channel (``rate_per_minute``, bursts of a quarter of it):
  what arrives beyond it is held and goes out as one digest message when the
  channel may send again, so a flood costs a channel a few messages, not one
  per alert.
- **Retry**: a failed delivery is retried after ``retry_s``, doubling up to
  ``retry_max_s``, ``attempts`` times in all; then it is recorded as failed.
- **Escalation**: a red or orange incident that is still ``new`` (no analyst
  acknowledged it: ``acknowledged`` asks the store) ``after_min`` after it was
  notified goes to the route's next recipient group, step by step.

Every channel has its own sending thread: a receiver that hangs delays only
its own messages.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import itertools
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import LruDict
from ingest.notify.channels import DeliveryError, deliver
from ingest.notify.config import Channel, NotifyConfig, NotifyConfigError, Route, load_config
from ingest.notify.message import (
    Message,
    alert_message,
    digest_message,
    escalation_message,
    incident_message,
    trend_message,
)
from ingest.notify.settings import settings_table
from sensors.schema import Field, arrow_schema

NOTIFICATION_FIELDS = [
    Field("notification_id", pa.string(), "deterministic: hash of channel, kind, subject, level and escalation step"),
    Field("created", pa.timestamp("ns", tz="UTC"), "when the notifier decided to send it (wall clock)"),
    Field("route", pa.string(), "the route that chose it"),
    Field("channel", pa.string(), "the channel's name"),
    Field("channel_type", pa.string(), "webhook, wecom, dingtalk, feishu, syslog or email"),
    Field("kind", pa.string(), "alert, incident, trend (a forecast reaching or a series crossing its threshold),"
          " escalation (an incident nobody acknowledged) or digest"),
    Field("subject_id", pa.string(), "the alert_id, incident_id or trend warning_id (a digest: its first message's)"),
    Field("level", pa.string(), "red, orange, yellow or blue (a digest: its worst)"),
    Field("title", pa.string(), "the alert's signature or the incident's title"),
    Field("covers", pa.uint32(), "messages it stands for: 1, or a digest's count"),
    Field("status", pa.string(), "queued, retrying, delivered, failed, or digested (held back by the rate limit"
          " and sent inside a digest)"),
    Field("attempts", pa.uint32(), "deliveries tried so far"),
    Field("delivered_at", pa.timestamp("ns", tz="UTC"), "when the channel accepted it (null: not yet)"),
    Field("latency_ms", pa.float64(), "from created to delivered"),
    Field("last_error", pa.string(), "why the last attempt failed ('' if none)"),
]
NOTIFICATION_SCHEMA = arrow_schema(NOTIFICATION_FIELDS, "notifications", 1)
ESCALATING_LEVELS = ("red", "orange")
LEVEL_RANK = {"red": 0, "orange": 1, "yellow": 2, "blue": 3}
#: how often a notifier reading a file checks whether it changed
RELOAD_CHECK_S = 1.0


@dataclass
class _Send:
    """One message for one channel, and what became of it."""

    route: str
    channel: Channel
    message: Message
    step: int = 0  # escalation step (0: the first notification)
    created: float = field(default_factory=time.time)
    attempts: int = 0
    status: str = "queued"
    delivered_at: float | None = None
    last_error: str = ""

    @property
    def notification_id(self) -> str:
        m = self.message
        key = f"{self.channel.name}|{m.kind}|{m.subject_id}|{m.level}|{self.step}|{len(m.covers)}"
        return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()

    def row(self) -> dict[str, Any]:
        m = self.message
        return {"notification_id": self.notification_id, "created": _us_ns(self.created), "route": self.route,
                "channel": self.channel.name, "channel_type": self.channel.type, "kind": m.kind,
                "subject_id": m.subject_id, "level": m.level,
                "title": m.headline("en") if m.kind == "digest" else m.title,
                "covers": max(len(m.covers), 1), "status": self.status, "attempts": self.attempts,
                "delivered_at": _us_ns(self.delivered_at) if self.delivered_at else None,
                "latency_ms": round((self.delivered_at - self.created) * 1000, 1) if self.delivered_at else None,
                "last_error": self.last_error}


def _us_ns(t: float) -> int:
    """Wall time to the microsecond, as ns (finer digits are noise, and Python's datetimes hold microseconds)."""
    return int(t * 1e6) * 1000


class _Sender(threading.Thread):
    """One channel's thread: rate limit, digest, deliver, retry."""

    def __init__(self, notifier: Notifier, channel: Channel) -> None:
        super().__init__(name=f"liaowang-notify-{channel.name}", daemon=True)
        self.notifier, self.channel = notifier, channel
        self.inbox: queue.Queue[_Send | None] = queue.Queue()
        self.held: list[_Send] = []
        self.retries: list[tuple[float, int, _Send]] = []
        self._tie = itertools.count()
        rate = notifier.config.rate_per_minute
        self.capacity = max(1.0, rate / 4)
        self.tokens = self.capacity
        self.refill_per_s = rate / 60.0
        self.last_refill = time.monotonic()
        self.closing = False

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last_refill) * self.refill_per_s)
        self.last_refill = now

    def run(self) -> None:
        while True:
            wait = self._next_wait()
            try:
                item = self.inbox.get(timeout=wait)
                if item is None:
                    self.closing = True
                else:
                    self.held.append(item)
                while True:  # everything that arrived together is held together
                    item = self.inbox.get_nowait()
                    if item is None:
                        self.closing = True
                    else:
                        self.held.append(item)
            except queue.Empty:
                pass
            self._send_due()
            if self.closing and not self.held and not self.retries:
                return
            if self.closing and self.notifier.deadline_passed():
                for s in self.held + [r[2] for r in self.retries]:
                    self._finish(s, "failed", s.last_error or "not delivered before the notifier stopped")
                return

    def _next_wait(self) -> float | None:
        waits = []
        if self.held:
            self._refill()
            waits.append(0.0 if self.tokens >= 1 else (1 - self.tokens) / max(self.refill_per_s, 1e-9))
        if self.retries:
            waits.append(max(0.0, self.retries[0][0] - time.monotonic()))
        if self.closing:
            waits.append(0.2)
        return min(waits) if waits else None

    def _send_due(self) -> None:
        while self.retries and self.retries[0][0] <= time.monotonic():
            self._attempt(heapq.heappop(self.retries)[2])
        if not self.held:
            return
        self._refill()
        if self.tokens < 1:
            return
        # as many single messages as the bucket allows; if more are held, the last token carries them all
        singles = len(self.held) if len(self.held) <= self.tokens else int(self.tokens) - 1
        for s in self.held[:singles]:
            self.tokens -= 1
            self._attempt(s)
        held, self.held = self.held[singles:], []
        if not held:
            return
        self.tokens -= 1
        digest = _Send(route=held[0].route, channel=self.channel, message=digest_message([s.message for s in held]))
        for s in held:  # each held message is recorded as sent inside the digest (whose row tells its delivery)
            s.status = "digested"
        self.notifier.record(held)
        self._attempt(digest)

    def _attempt(self, s: _Send) -> None:
        s.attempts += 1
        try:
            deliver(self.channel, s.message)
        except DeliveryError as e:
            config = self.notifier.config
            if s.attempts >= config.attempts:
                self._finish(s, "failed", str(e))
            else:
                s.status, s.last_error = "retrying", str(e)
                self.notifier.record([s])
                delay = min(config.retry_max_s, config.retry_s * 2 ** (s.attempts - 1))
                heapq.heappush(self.retries, (time.monotonic() + delay, next(self._tie), s))
            return
        self._finish(s, "delivered", "", delivered_at=time.time())

    def _finish(self, s: _Send, status: str, error: str, delivered_at: float | None = None) -> None:
        s.status, s.last_error = status, error
        if delivered_at is not None:
            s.delivered_at = delivered_at
        self.notifier.record([s])


@dataclass
class _Watch:
    """A red/orange incident waiting to be acknowledged, and its route's next escalation step."""

    route: Route
    message: Message
    since: float  # monotonic time of the first notification
    step: int = 0


class Notifier:
    """Routes results to channels. ``config``: settings, or a YAML file that is re-read when it changes."""

    def __init__(self, config: NotifyConfig | Path, *, log_path: Path | None = None,
                 acknowledged: Callable[[list[str]], set[str]] | None = None) -> None:
        self.path = config if isinstance(config, Path) else None
        self.config = load_config(config) if isinstance(config, Path) else config
        self._mtime = self.path.stat().st_mtime_ns if self.path else 0
        self._loaded_at_ns = time.time_ns()
        self._reload_error: str | None = None
        #: changes when the settings (or a failed re-read of them) change: stored again then
        self.settings_version = 0
        self._checked = time.monotonic()
        self.log_path = log_path
        self.acknowledged = acknowledged
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []  # since the last drain
        self._latest: dict[str, dict[str, Any]] = {}  # every notification's latest row
        self._sent_at: dict[tuple[str, str, str], float] = {}  # (channel, kind, dedup key) -> when
        self._incident_level: dict[tuple[str, str], str] = {}  # (route, incident) -> level last notified
        self._alerted: LruDict[str, None] = LruDict()  # alert ids offered (a warning, then its final alert)
        self._watches: dict[str, _Watch] = {}  # incident_id -> watch
        self._senders: dict[str, _Sender] = {}
        self.counts = {"offered": 0, "routed": 0, "deduplicated": 0}
        self._deadline: float | None = None
        self._stop = threading.Event()
        self._escalator = threading.Thread(target=self._escalate_loop, name="liaowang-notify-escalation", daemon=True)
        self._escalator.start()

    # -- input ---------------------------------------------------------------------------

    def offer(self, alerts: pa.Table | None = None, incidents: pa.Table | None = None,
              trend: pa.Table | None = None) -> None:
        """New alert rows, changed incident rows and trend warnings (whole rows, as ``ingest.detect.Results``
        has them)."""
        self._reload_if_changed()
        if not self.config.routes:
            return
        if alerts is not None and alerts.num_rows:
            self._offer_alerts(alerts)
        if incidents is not None and incidents.num_rows:
            self._offer_incidents(incidents)
        if trend is not None and trend.num_rows:
            self._offer_trend(trend)

    def _offer_alerts(self, alerts: pa.Table) -> None:
        levels = set(lv for r in self.config.routes if "alert" in r.kinds for lv in r.levels)
        cols = ["alert_id", "first_seen", "last_seen", "level", "signature_id", "signature", "category", "score",
                "rule_id", "group", "src_ip", "dst_ip", "tunnel_src_ip", "tunnel_dst_ip"]
        wanted = pa.array(sorted(levels), pa.string())
        for row in _rows(alerts, cols, lambda t: pc.is_in(t["level"], value_set=wanted)):
            self.counts["offered"] += 1
            if row["alert_id"] in self._alerted:  # its early warning went out already (or a re-delivery)
                self.counts["deduplicated"] += 1
                continue
            self._alerted[row["alert_id"]] = None
            message = alert_message(row)
            addresses = [a for a in (row["src_ip"], row["dst_ip"], row["tunnel_src_ip"], row["tunnel_dst_ip"]) if a]
            for route in self.config.routes:
                if ("alert" in route.kinds and row["level"] in route.levels
                        and (not route.categories or row["category"] in route.categories)
                        and _in_networks(addresses, route)):
                    self._route(route, message, f"{row['rule_id']}|{row['group']}")

    def _offer_incidents(self, incidents: pa.Table) -> None:
        cols = ["incident_id", "first_seen", "last_seen", "level", "score", "state", "title", "tactics",
                "affected_assets", "subscribers", "slices", "merged_into", "entities"]
        for row in _rows(incidents, cols, None):
            if row["merged_into"]:  # absorbed by an older incident: that one carries the story on
                self._watches.pop(row["incident_id"], None)
                continue
            self.counts["offered"] += 1
            message = incident_message(row)
            addresses = list(row["affected_assets"] or []) + [e.split(":", 1)[1] for e in row["entities"] or []
                                                             if e.startswith("host:")]
            for route in self.config.routes:
                if not ("incident" in route.kinds and row["level"] in route.levels and _in_networks(addresses, route)):
                    continue
                if route.categories and not set(route.categories) & set(row["tactics"] or []):
                    continue
                key = (route.name, row["incident_id"])
                last = self._incident_level.get(key)
                if last is not None and LEVEL_RANK[row["level"]] >= LEVEL_RANK[last]:
                    continue  # already told at this level or a worse one
                self._incident_level[key] = row["level"]
                self._route(route, message, f"{row['incident_id']}|{row['level']}")
                if route.escalate and row["level"] in ESCALATING_LEVELS and row["state"] == "new":
                    watch = self._watches.get(row["incident_id"])
                    if watch is None or watch.route.name == route.name:
                        self._watches[row["incident_id"]] = _Watch(route, message, time.monotonic(),
                                                                   watch.step if watch else 0)

    def _offer_trend(self, warnings: pa.Table) -> None:
        for row in _rows(warnings, list(warnings.column_names), None):
            self.counts["offered"] += 1
            message = trend_message(row)
            for route in self.config.routes:
                if ("trend" in route.kinds and message.level in route.levels
                        and (not route.categories or row["series"] in route.categories)):
                    self._route(route, message, f"{row['series']}|{row['kind']}")

    def _route(self, route: Route, message: Message, dedup_key: str, step: int = 0,
               channels: Iterable[str] | None = None) -> None:
        now = time.monotonic()
        for name in route.channels if channels is None else channels:
            key = (name, message.kind, dedup_key)
            if now - self._sent_at.get(key, -1e18) < self.config.dedup_s:
                self.counts["deduplicated"] += 1
                continue
            self._sent_at[key] = now
            self.counts["routed"] += 1
            send = _Send(route=route.name, channel=self.config.channels[name], message=message, step=step)
            self.record([send])
            self._sender(name).inbox.put(send)
        if len(self._sent_at) > 100_000:  # forget what is past the dedup window
            self._sent_at = {k: t for k, t in self._sent_at.items() if now - t < self.config.dedup_s}

    def _sender(self, name: str) -> _Sender:
        sender = self._senders.get(name)
        if sender is None or sender.channel != self.config.channels[name]:
            if sender is not None:
                sender.inbox.put(None)
            sender = self._senders[name] = _Sender(self, self.config.channels[name])
            sender.start()
        return sender

    def _reload_if_changed(self) -> None:
        if self.path is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        self._checked = time.monotonic()
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime == self._mtime:
                return
            self._mtime = mtime
            self.config = load_config(self.path)
            self._loaded_at_ns, self._reload_error = time.time_ns(), None
        except (OSError, NotifyConfigError) as e:  # keep notifying with the settings that worked
            if str(e) == self._reload_error:
                return  # said already (a missing file is looked for every second)
            print(f"liaowang: notifications: keeping the previous settings: {e}", file=sys.stderr)
            self._reload_error = str(e)
        self.settings_version += 1

    def settings(self) -> pa.Table:
        """The routes in force, channel secrets masked (the store's ``notify_routes`` table)."""
        return settings_table(self.config, str(self.path) if self.path else "", self._loaded_at_ns,
                              self._mtime or None, self._reload_error)

    # -- escalation ------------------------------------------------------------------------

    def _escalate_loop(self) -> None:
        while not self._stop.wait(0.5):
            self.escalate_due()

    def escalate_due(self) -> None:
        """Escalate every watched incident whose next step is due and that nobody acknowledged."""
        now = time.monotonic()
        due = {i: w for i, w in list(self._watches.items())
               if w.step < len(w.route.escalate) and now - w.since >= w.route.escalate[w.step].after_s}
        if not due:
            return
        try:
            acked = self.acknowledged(list(due)) if self.acknowledged is not None else set()
        except Exception as e:  # noqa: BLE001 - a store that cannot answer now is asked again next time
            print(f"liaowang: notifications: cannot read incident states: {e}", file=sys.stderr)
            return
        for incident_id, w in due.items():
            if incident_id in acked:
                self._watches.pop(incident_id, None)
                continue
            step = w.route.escalate[w.step]
            self._route(w.route, escalation_message(w.message, now - w.since), f"{incident_id}|{w.step + 1}",
                        step=w.step + 1, channels=step.channels)
            w.step += 1
            if w.step >= len(w.route.escalate):
                self._watches.pop(incident_id, None)

    # -- output ----------------------------------------------------------------------------

    def record(self, sends: list[_Send]) -> None:
        rows = [s.row() for s in sends]
        with self._lock:
            self._rows.extend(rows)
            self._latest.update((r["notification_id"], r) for r in rows)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as log:
                    for r in rows:
                        log.write(json.dumps(r, ensure_ascii=False) + "\n")

    def drain(self) -> pa.Table:
        """Notification rows recorded since the last drain (the latest row of a notification wins in the store)."""
        with self._lock:
            rows, self._rows = self._rows, []
        return _table({r["notification_id"]: r for r in rows}.values())

    def table(self) -> pa.Table:
        """Every notification so far, as it stands now."""
        with self._lock:
            return _table(list(self._latest.values()))

    def deadline_passed(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (retries included) for up to ``timeout_s``; what is left is recorded as failed."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._escalator.join()
        for s in self._senders.values():
            s.inbox.put(None)
        for s in self._senders.values():
            s.join(timeout=max(0.0, self._deadline - time.monotonic()) + 1.0)


def _table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=NOTIFICATION_SCHEMA)  # times as ns integers: Arrow takes them


def _rows(table: pa.Table, columns: list[str], keep: Callable[[pa.Table], pa.Array] | None) -> list[dict[str, Any]]:
    """Rows as dicts, timestamps as ns integers (Arrow's datetimes lose the ns)."""
    t = table.select([c for c in columns if c in table.column_names])
    if keep is not None:
        t = t.filter(keep(t))
    t = pa.table({name: (col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col)
                  for name, col in zip(t.column_names, t.columns)})
    return t.to_pylist()


def _in_networks(addresses: list[str], route: Route) -> bool:
    if not route.networks:
        return True
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if any(ip.version == n.version and ip in n for n in route.networks):
            return True
    return False


__all__ = ["NOTIFICATION_SCHEMA", "Notifier"]
