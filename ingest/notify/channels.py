"""Delivering one message on one channel: each channel type's wire format, and what counts as delivered.

- ``webhook``: POST of the message as JSON; any 2xx is delivered.
- ``wecom`` / ``dingtalk`` / ``feishu``: the group robots' markdown (WeCom, DingTalk) or text (Feishu) messages;
  delivered when HTTP is 2xx **and** the robot's own code is 0 (a robot answers 200 with an error code for a bad
  key or a signature).  DingTalk and Feishu sign with the channel's ``secret`` as their documents describe.
- ``syslog``: RFC 5424 with a CEF payload, over UDP or TCP (RFC 6587 octet counting).
- ``email``: SMTP, STARTTLS by default (the server's certificate is verified), optional login.

:func:`deliver` raises :class:`DeliveryError` with a short reason; the notifier retries.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import ssl
import time
import urllib.parse
from typing import Any

from ingest.notify.config import Channel
from ingest.notify.message import CEF_SEVERITY, Message

VERSION = "0.1.0"


class DeliveryError(Exception):
    """A message the channel did not accept (the reason is short enough to store and show)."""


def _ssl_context(channel: Channel) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=channel.ca_file or None)


def _post(channel: Channel, url: str, body: dict[str, Any]) -> Any:
    # the HTTP and mail clients load on first delivery, not with every command that imports the store
    import urllib.error
    import urllib.request

    data = json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8",
                                              "User-Agent": f"liaowang/{VERSION}"})
    try:
        context = _ssl_context(channel) if url.startswith("https://") else None
        with urllib.request.urlopen(request, timeout=channel.timeout_s, context=context) as response:
            payload = response.read(65536)
    except urllib.error.HTTPError as e:
        raise DeliveryError(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        parts = urllib.parse.urlsplit(url)  # the host only: user info would put a password in the record
        raise DeliveryError(f"cannot reach {parts.hostname}:{parts.port or parts.scheme}: "
                            f"{getattr(e, 'reason', None) or e}") from e
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return None


def _robot_code(answer: Any, *keys: str) -> None:
    """Group robots answer 200 with their own code: 0 is success."""
    if not isinstance(answer, dict):
        raise DeliveryError("the robot's answer is not JSON")
    for key in keys:
        if key in answer:
            if answer[key] not in (0, "0"):
                raise DeliveryError(f"robot refused: {answer.get('errmsg') or answer.get('msg') or answer[key]}")
            return
    raise DeliveryError("the robot's answer has no status code")


def _sign(secret: str, message: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()).decode()


def _webhook(channel: Channel, message: Message) -> None:
    _post(channel, channel.url, message.as_json())


def _wecom(channel: Channel, message: Message) -> None:
    answer = _post(channel, channel.url, {"msgtype": "markdown", "markdown": {"content": message.markdown(channel.language)}})
    _robot_code(answer, "errcode")


def _dingtalk(channel: Channel, message: Message) -> None:
    url = channel.url
    if channel.secret:  # DingTalk: HMAC-SHA256 of "timestamp\nsecret" keyed by the secret, in the URL
        ts = str(int(time.time() * 1000))
        sign = urllib.parse.quote_plus(_sign(channel.secret, f"{ts}\n{channel.secret}"))
        url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={sign}"
    answer = _post(channel, url, {"msgtype": "markdown", "markdown": {
        "title": message.headline(channel.language), "text": message.markdown(channel.language)}})
    _robot_code(answer, "errcode")


def _feishu(channel: Channel, message: Message) -> None:
    body: dict[str, Any] = {"msg_type": "text", "content": {"text": message.text(channel.language)}}
    if channel.secret:  # Feishu: HMAC-SHA256 keyed by "timestamp\nsecret" over nothing, in the body
        ts = str(int(time.time()))
        body = {"timestamp": ts, "sign": _sign(f"{ts}\n{channel.secret}", ""), **body}
    _robot_code(_post(channel, channel.url, body), "code", "StatusCode")


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_value(value: Any) -> str:
    return (str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n"))


def cef(message: Message) -> str:
    """The message as an ArcSight CEF record."""
    signature = str(message.signature_id) if message.kind == "alert" and message.signature_id else message.kind
    ext: dict[str, Any] = {"rt": message.last_seen_ns // 1_000_000 or None, "start": message.first_seen_ns // 1_000_000 or None,
                           "cat": message.details.get("category") or message.kind,
                           "src": message.details.get("src"), "dst": message.details.get("dst"),
                           "cs1Label": "level", "cs1": message.level, "cs2Label": "liaowangId", "cs2": message.subject_id,
                           "cn1Label": "score", "cn1": message.score,
                           "msg": message.text("en").replace("\n", "; ")}
    if message.details.get("tactics"):
        ext.update({"cs3Label": "tactics", "cs3": ",".join(message.details["tactics"])})
    name = message.headline("en") if message.kind == "digest" else message.title
    return (f"CEF:0|Liaowang|Liaowang|{VERSION}|{_cef_header(signature)}|{_cef_header(name)}|"
            f"{CEF_SEVERITY.get(message.level, 5)}|" + " ".join(f"{k}={_cef_value(v)}" for k, v in ext.items()
                                                              if v not in (None, "")))


def syslog_record(message: Message, hostname: str | None = None) -> bytes:
    """RFC 5424: facility local4 (20), severity from the level; MSG is the CEF record (UTF-8 with BOM)."""
    severity = {"red": 2, "orange": 3, "yellow": 4, "blue": 5}.get(message.level, 5)
    now = dt.datetime.now(tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    head = f"<{20 * 8 + severity}>1 {now} {host} liaowang - {message.kind} - "
    return head.encode() + b"\xef\xbb\xbf" + cef(message).encode()


def _syslog(channel: Channel, message: Message) -> None:
    record = syslog_record(message)
    port = channel.port or 514
    try:
        if channel.protocol == "tcp":
            with socket.create_connection((channel.host, port), timeout=channel.timeout_s) as s:
                s.sendall(str(len(record)).encode() + b" " + record)
        else:
            with socket.socket(socket.AF_INET6 if ":" in channel.host else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(record, (channel.host, port))
    except OSError as e:
        raise DeliveryError(f"syslog {channel.host}:{port}: {e.strerror or e}") from e


def _email(channel: Channel, message: Message) -> None:
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["Subject"] = message.headline(channel.language)
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.recipients)
    mail.set_content(message.text(channel.language))
    try:
        with smtplib.SMTP(channel.host, channel.port or 587, timeout=channel.timeout_s) as smtp:
            if channel.starttls:
                smtp.starttls(context=_ssl_context(channel))
            if channel.username:
                smtp.login(channel.username, channel.password)
            smtp.send_message(mail)
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"SMTP {channel.host}: {e}") from e


SENDERS = {"webhook": _webhook, "wecom": _wecom, "dingtalk": _dingtalk, "feishu": _feishu, "syslog": _syslog,
           "email": _email}


def deliver(channel: Channel, message: Message) -> None:
    SENDERS[channel.type](channel, message)


__all__ = ["DeliveryError", "cef", "deliver", "syslog_record"]
