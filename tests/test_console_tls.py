"""The console over HTTPS: `liaowang console --tls-cert --tls-key`, checked with a client that verifies it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PCAPS
from tests.kafka_fixtures import ROOT, free_port
from tests.tls_fixtures import self_signed


def _console(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LIAOWANG_ADMIN_PASSWORD": "admin-password-1", "LIAOWANG_PSEUDONYM_KEY": "tls-tests"}
    return subprocess.Popen([sys.executable, "-m", "console.cli", "console", *args], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def test_console_serves_https_with_secure_cookies_and_hsts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "console.cli", "replay", str(PCAPS / "zeek_ssh_sshguess.pcap"), "--out",
                    str(tmp_path / "out"), "--store", str(store), "-q"], cwd=ROOT, check=True,
                   env={**os.environ, "LIAOWANG_PSEUDONYM_KEY": "tls-tests"})
    cert, key = self_signed(tmp_path / "tls")
    port = free_port()
    proc = _console("--store", str(store), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key),
                    log=tmp_path / "console.log")
    try:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    page = client.get(url + "/")
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "console.log").read_text()
                    time.sleep(0.2)
            assert page.status_code == 200 and page.headers["strict-transport-security"].startswith("max-age=")
            login = client.post(url + "/api/login", json={"username": "admin", "password": "admin-password-1"})
            assert login.status_code == 200
            cookie = login.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie
            assert client.get(url + "/api/alerts").status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP gets no page
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert "https://localhost" in (tmp_path / "console.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_console_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    r = subprocess.run([sys.executable, "-m", "console.cli", "console", "--store", str(tmp_path / "store"),
                        "--tls-cert", str(cert), "--tls-key", str(other_key)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a matching" in r.stderr
