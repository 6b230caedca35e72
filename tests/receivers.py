"""Real local receivers for the notification tests: an HTTP server (webhooks and group robots), syslog over
UDP and TCP, and an SMTP server with STARTTLS (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: Any
    at: float


@dataclass
class HttpReceiver:
    """POSTs to any path are recorded; ``answer(path, body)`` gives the JSON to reply (default ``{"errcode": 0}``)."""

    port: int = 0
    answer: Callable[[str, Any], tuple[int, Any]] = lambda path, body: (200, {"errcode": 0, "code": 0})
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                url = urllib.parse.urlsplit(self.path)
                body = json.loads(raw)
                receiver.received.append(Received(url.path, dict(urllib.parse.parse_qsl(url.query)), body, time.time()))
                status, reply = receiver.answer(url.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SyslogReceiver:
    """Records syslog messages on a UDP and a TCP port (TCP: RFC 6587 octet-counted frames)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp_port, self.tcp_port = self.udp.getsockname()[1], self.tcp.getsockname()[1]
        threading.Thread(target=self._udp, daemon=True).start()
        threading.Thread(target=self._tcp, daemon=True).start()

    def _udp(self) -> None:
        while True:
            try:
                data, _ = self.udp.recvfrom(65536)
            except OSError:
                return
            self.messages.append(("udp", data))

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while chunk := conn.recv(65536):
                    buf += chunk
                while buf:
                    length, _, rest = buf.partition(b" ")
                    n = int(length)
                    self.messages.append(("tcp", rest[:n]))
                    buf = rest[n:]

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[EmailMessage, bool]] = []  # (message, whether the session was TLS)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((mail, session.ssl is not None))  # type: ignore[arg-type]
        return "250 OK"


class SmtpReceiver:
    """An SMTP server on loopback that requires STARTTLS with the given certificate."""

    def __init__(self, cert: Path, key: Path) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.mailbox = _Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True)
        self.controller.start()

    @property
    def messages(self) -> list[tuple[EmailMessage, bool]]:
        return self.mailbox.messages

    def close(self) -> None:
        self.controller.stop()


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll until ``condition()`` is truthy; its value, or AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")
