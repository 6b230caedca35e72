"""Notification settings: channels (where messages go) and routes (which alerts and incidents go where).

One YAML file, documented in ``docs/notifications.md``::

    dedup_s: 600              # one message per subject and route in this long
    rate_per_minute: 20       # per channel; beyond it, held messages go out as one digest
    asset_groups:             # names for address ranges, used by routes
      core: [10.10.0.0/16]
    channels:
      soc: {type: webhook, url: "http://soc.example/hook", language: en}
      duty: {type: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=${DINGTALK_TOKEN}",
             secret: "${DINGTALK_SECRET}"}
    routes:
      - name: red-incidents
        kinds: [incident]
        levels: [red, orange]
        channels: [soc]
        escalate: [{after_min: 15, channels: [duty]}]

``${NAME}`` in any string is read from the environment (secrets stay out of the file).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHANNEL_TYPES = ("webhook", "wecom", "dingtalk", "feishu", "syslog", "email")
KINDS = ("alert", "incident", "trend")
DEFAULT_KINDS = ("alert", "incident")  # trend warnings go only to routes that name them
LEVEL_NAMES = ("red", "orange", "yellow", "blue")
LANGUAGES = ("zh-CN", "en")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class NotifyConfigError(Exception):
    """A notification file that cannot be used: one clear message, naming the file and the setting."""


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    language: str = "zh-CN"
    url: str = ""  # webhook types
    secret: str = ""  # DingTalk / Feishu signing secret
    host: str = ""  # syslog, email
    port: int = 0
    protocol: str = "udp"  # syslog: udp or tcp (RFC 6587 octet counting)
    starttls: bool = True  # email
    ca_file: str = ""  # email/https: a CA bundle to verify the server with (default: the system's)
    username: str = ""
    password: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Escalation:
    after_s: float
    channels: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    name: str
    channels: tuple[str, ...]
    kinds: tuple[str, ...] = DEFAULT_KINDS
    levels: tuple[str, ...] = ("red", "orange")
    categories: tuple[str, ...] = ()  # alert categories (incidents: of any of their alerts' tactics); empty: any
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # assets; empty: any
    escalate: tuple[Escalation, ...] = ()


@dataclass(frozen=True)
class NotifyConfig:
    channels: dict[str, Channel] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    dedup_s: float = 600.0
    rate_per_minute: float = 20.0
    attempts: int = 6  # deliveries tried per message before it is recorded as failed
    retry_s: float = 1.0  # first retry after this; doubling up to retry_max_s
    retry_max_s: float = 60.0


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def env(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise NotifyConfigError(f"{where}: environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]
        return _ENV.sub(env, value)
    if isinstance(value, list):
        return [_expand(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _names(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise NotifyConfigError(f"{where}: expected a name or a list of names")
    for v in items:
        if allowed is not None and v not in allowed:
            raise NotifyConfigError(f"{where}: unknown {v!r}; one of {', '.join(allowed)}")
    return tuple(items)


def _channel(name: str, raw: Any, where: str) -> Channel:
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{where}: expected a mapping")
    kind = raw.get("type")
    if kind not in CHANNEL_TYPES:
        raise NotifyConfigError(f"{where}.type: {kind!r} is not one of {', '.join(CHANNEL_TYPES)}")
    known = {"type", "language", "url", "secret", "host", "port", "protocol", "starttls", "username", "password",
             "from", "to", "timeout_s", "ca_file"}
    if extra := sorted(set(raw) - known):
        raise NotifyConfigError(f"{where}: unknown setting {extra[0]!r}")
    language = raw.get("language", "zh-CN")
    if language not in LANGUAGES:
        raise NotifyConfigError(f"{where}.language: {language!r} is not one of {', '.join(LANGUAGES)}")
    ch = Channel(name=name, type=kind, language=language, url=str(raw.get("url", "")), secret=str(raw.get("secret", "")),
                 host=str(raw.get("host", "")), port=int(raw.get("port", 0) or 0),
                 protocol=str(raw.get("protocol", "udp")), starttls=bool(raw.get("starttls", True)),
                 username=str(raw.get("username", "")), password=str(raw.get("password", "")),
                 sender=str(raw.get("from", "")), recipients=_names(raw.get("to", []), f"{where}.to"),
                 timeout_s=float(raw.get("timeout_s", 5.0)), ca_file=str(raw.get("ca_file", "")))
    if kind in ("webhook", "wecom", "dingtalk", "feishu") and not ch.url.startswith(("http://", "https://")):
        raise NotifyConfigError(f"{where}.url: an http:// or https:// URL is required")
    if kind == "syslog":
        if not ch.host:
            raise NotifyConfigError(f"{where}.host: required")
        if ch.protocol not in ("udp", "tcp"):
            raise NotifyConfigError(f"{where}.protocol: udp or tcp")
    if kind == "email" and not (ch.host and ch.sender and ch.recipients):
        raise NotifyConfigError(f"{where}: host, from and to are required")
    return ch


def _networks(value: Any, groups: dict[str, list[str]], where: str
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in _names(value, where):
        for cidr in groups.get(item, [item]):
            try:
                out.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as e:
                raise NotifyConfigError(f"{where}: {cidr!r} is neither an asset group nor an address or CIDR") from e
    return tuple(out)


def parse_config(raw: Any, source: str = "notifications") -> NotifyConfig:
    """Settings from a parsed YAML document; NotifyConfigError names the setting at fault."""
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{source}: expected a mapping with channels and routes")
    raw = _expand(raw, source)
    if extra := sorted(set(raw) - {"channels", "routes", "asset_groups", "dedup_s", "rate_per_minute", "attempts",
                                   "retry_s", "retry_max_s"}):
        raise NotifyConfigError(f"{source}: unknown setting {extra[0]!r}")
    groups = raw.get("asset_groups") or {}
    if not isinstance(groups, dict):
        raise NotifyConfigError(f"{source}.asset_groups: expected a mapping of names to address lists")
    groups = {str(k): list(_names(v, f"{source}.asset_groups.{k}")) for k, v in groups.items()}
    channels = {str(n): _channel(str(n), c, f"{source}.channels.{n}") for n, c in (raw.get("channels") or {}).items()}
    routes: list[Route] = []
    for i, r in enumerate(raw.get("routes") or []):
        where = f"{source}.routes[{i}]"
        if not isinstance(r, dict):
            raise NotifyConfigError(f"{where}: expected a mapping")
        chans = _names(r.get("channels", []), f"{where}.channels", tuple(channels))
        if not chans:
            raise NotifyConfigError(f"{where}.channels: at least one channel")
        steps = []
        for j, e in enumerate(r.get("escalate") or []):
            if not isinstance(e, dict) or "after_min" not in e:
                raise NotifyConfigError(f"{where}.escalate[{j}]: expected after_min and channels")
            steps.append(Escalation(float(e["after_min"]) * 60.0,
                                    _names(e.get("channels", []), f"{where}.escalate[{j}].channels", tuple(channels))))
        name = str(r.get("name", f"route-{i + 1}"))
        if any(prev.name == name for prev in routes):
            raise NotifyConfigError(f"{where}.name: {name!r} names an earlier route too")
        routes.append(Route(
            name=name, channels=chans,
            kinds=_names(r.get("kinds", list(DEFAULT_KINDS)), f"{where}.kinds", KINDS),
            levels=_names(r.get("levels", ["red", "orange"]), f"{where}.levels", LEVEL_NAMES),
            categories=_names(r.get("categories", []), f"{where}.categories"),
            networks=_networks(r.get("assets", []), groups, f"{where}.assets"),
            escalate=tuple(sorted(steps, key=lambda s: s.after_s))))
    try:
        return NotifyConfig(channels=channels, routes=tuple(routes), dedup_s=float(raw.get("dedup_s", 600)),
                            rate_per_minute=float(raw.get("rate_per_minute", 20)), attempts=int(raw.get("attempts", 6)),
                            retry_s=float(raw.get("retry_s", 1.0)), retry_max_s=float(raw.get("retry_max_s", 60.0)))
    except (TypeError, ValueError) as e:
        raise NotifyConfigError(f"{source}: {e}") from e


def load_config(path: Path) -> NotifyConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise NotifyConfigError(f"{path}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise NotifyConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(raw, str(path))


__all__ = ["CHANNEL_TYPES", "Channel", "Escalation", "NotifyConfig", "NotifyConfigError", "Route", "load_config",
           "parse_config"]
