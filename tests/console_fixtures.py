"""A console over a real store for the console tests: the bundled captures plus a generated capture whose DNS
names and HTTP headers carry script payloads, replayed and loaded into a fresh DuckDB store; three users."""

from __future__ import annotations

import base64
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi.testclient import TestClient

from console.app import create_app
from console.state import ConsoleState
from ingest.load import load_output
from ingest.replay import replay
from ingest.store import open_store
from ingest.store.api import Store
from tests.conftest import PCAPS
from tests.intel_fixtures import lab_feeds
from tests.receivers import HttpReceiver, free_port

PAYLOADS = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=2">']
PASSWORDS = {"admin": "admin-pass-0001", "analyst": "analyst-pass-01", "viewer": "viewer-pass-001"}


def hostile_capture(path: Path) -> Path:
    """DNS queries and HTTP requests (with Basic auth: a cleartext-credentials alert) whose names, Host, URI,
    User-Agent and Server headers are script payloads."""
    from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, Raw, wrpcap

    def eth(p: object) -> Ether:
        return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p  # type: ignore[operator, no-any-return]

    cli, srv, dns = "10.66.0.5", "10.66.0.80", "10.66.0.53"
    t0, packets = 1_700_000_000.0, []
    for i, p in enumerate(PAYLOADS):
        q = eth(IP(src=cli, dst=dns) / UDP(sport=40000 + i, dport=53) /
                DNS(id=i, rd=1, qd=DNSQR(qname=p.replace(".", "_") + ".evil.example")))
        q.time = t0 + i
        packets.append(q)
        sport = 50000 + i
        req = (f"GET /{p} HTTP/1.1\r\nHost: {p}\r\nUser-Agent: {p}\r\nAuthorization: Basic "
               + base64.b64encode(b"admin:" + p.encode()).decode() + "\r\n\r\n").encode()
        conversation = [
            IP(src=cli, dst=srv) / TCP(sport=sport, dport=80, flags="S", seq=999),
            IP(src=srv, dst=cli) / TCP(sport=80, dport=sport, flags="SA", seq=5000, ack=1000),
            IP(src=cli, dst=srv) / TCP(sport=sport, dport=80, flags="A", seq=1000, ack=5001),
            IP(src=cli, dst=srv) / TCP(sport=sport, dport=80, flags="PA", seq=1000, ack=5001) / Raw(req),
            IP(src=srv, dst=cli) / TCP(sport=80, dport=sport, flags="PA", seq=5001, ack=1000 + len(req)) /
            Raw(b"HTTP/1.1 200 OK\r\nServer: " + p.encode() + b"\r\nContent-Length: 0\r\n\r\n"),
        ]
        for j, pkt in enumerate(conversation):
            frame = eth(pkt)
            frame.time = t0 + 10 + 5 * i + 0.01 * j
            packets.append(frame)
    wrpcap(str(path), packets)
    return path


@dataclass
class Console:
    url: str
    store: Store
    state: ConsoleState
    root: Path


#: a key in the SOC webhook's URL: the console shows the route, never the key
ROBOT_TOKEN = "c0ffee" * 6


def build_store(root: Path) -> tuple[Store, ConsoleState]:
    """The bundled captures (and hostile strings) replayed into a store, notifying a real local webhook and a
    receiver that is down (so the record has deliveries and failures), with intelligence feeds (tests/intel_fixtures.py)
    and trend thresholds the captures cross."""
    captures = [str(PCAPS), str(hostile_capture(root / "hostile.pcap"))]
    receiver = HttpReceiver()
    notify = root / "notify.yml"
    notify.write_text(yaml.safe_dump({
        "attempts": 2, "retry_s": 0.1,
        "channels": {"soc": {"type": "webhook", "url": receiver.url() + f"?access_token={ROBOT_TOKEN}"},
                     "pager": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/down"}},
        "routes": [{"name": "incidents", "kinds": ["incident"], "levels": ["red", "orange", "yellow"], "channels": ["soc"]},
                   {"name": "red-alerts", "kinds": ["alert"], "levels": ["red"], "channels": ["pager"]},
                   {"name": "trend", "kinds": ["trend"], "levels": ["yellow", "orange"], "channels": ["soc"]}]}))
    trend = root / "trend.yml"
    trend.write_text(yaml.safe_dump({"min_buckets": 2, "thresholds": [{"series": "alerts:all", "threshold": 3},
                                                                       {"series": "traffic:packets", "threshold": 500}]}))
    try:
        summary = replay(captures, root / "replay", processes=1, notify=notify, intel=lab_feeds(root / "intel"),
                         trend=trend)
    finally:
        receiver.close()
    store = open_store(root / "store")
    load_output(root / "replay", store, summary)
    state = ConsoleState(root / "store" / "console")
    for name, password in PASSWORDS.items():
        state.add_user(name, password, name)
    return store, state


def serve_in_thread(store: Store, state: ConsoleState) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store, state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the console did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def client(app: Any, user: str | None = None, password: str | None = None) -> tuple[TestClient, dict[str, str]]:
    """A client signed in as ``user`` (a fixture user unless ``password`` is given) and its CSRF header."""
    c = TestClient(app)
    if user is None:
        return c, {}
    r = c.post("/api/login", json={"username": user, "password": password or PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}
