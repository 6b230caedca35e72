"""`liaowang replay` and `liaowang generate` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from console.cli import main
from tests.conftest import PCAPS, ROOT

REQUIRED = ["flow_id", "community_id", "first_seen", "last_seen", "src_ip", "dst_ip", "src_port", "dst_port",
            "ip_proto", "teid", "tunnel_src_ip", "tunnel_dst_ip", "bidirectional_packets", "bidirectional_bytes",
            "src2dst_packets", "dst2src_packets", "src2dst_bytes", "dst2src_bytes"]


def test_replay_writes_flows_and_eve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(PCAPS / "arkime_gtp-u.pcap"), str(PCAPS / "5greplay_oai.pcap"), "--out", str(out)]) == 0
    flows = pq.read_table(out / "flows.parquet")
    assert flows.column_names[: len(REQUIRED)] == REQUIRED
    assert flows.schema.metadata[b"liaowang.version"] == b"2"
    events = [json.loads(line) for line in (out / "eve.json").read_text().splitlines()]
    assert [e["event_type"] for e in events].count("flow") == flows.num_rows
    assert events[-1]["event_type"] == "stats" and events[-1]["stats"]["capture"]["packets"] == 855
    gtp = [e for e in events if e.get("tunnel")]
    assert gtp and all(e["tunnel"]["proto"] == "gtpu" and "teid" in e["tunnel"] for e in gtp)
    summary = capsys.readouterr().out
    assert "packets" in summary and "855" in summary and "flows" in summary


def test_not_a_capture_exits_2_and_keeps_previous_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(PCAPS / "arkime_gtp-u.pcap"), "--out", str(out), "-q"]) == 0
    before = (out / "flows.parquet").read_bytes()
    bad = tmp_path / "notes.pcap"
    bad.write_text("hello")
    assert main(["replay", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a pcap or pcapng capture" in err
    assert (out / "flows.parquet").read_bytes() == before


def test_damaged_file_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (PCAPS / "5greplay_oai.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:5000])
    assert main(["replay", str(cut), "--out", str(tmp_path / "a"), "-q"]) == 0  # something was read
    assert "damaged at byte" in capsys.readouterr().err
    empty = tmp_path / "empty_records.pcap"
    empty.write_bytes(data[:24] + data[24:30])  # header and a torn first record
    assert main(["replay", str(empty), "--out", str(tmp_path / "b"), "-q"]) == 1  # nothing could be read


def test_console_script_exits_at_once_with_everything_written(tmp_path: Path) -> None:
    """The command as installed (console.cli:run) ends a replay with os._exit: its piped summary, files and
    exit codes must be those of a normal exit."""
    def liaowang(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as piped
        return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    out = tmp_path / "out"
    done = liaowang("replay", str(PCAPS / "5greplay_oai.pcap"), "--out", str(out), "--flows-only")
    assert done.returncode == 0, done.stderr
    assert "packets" in done.stdout and "flows.parquet" in done.stdout  # the summary, flushed through the pipe
    flows = pq.read_table(out / "flows.parquet")
    events = [json.loads(line) for line in (out / "eve.json").read_text().splitlines()]
    assert flows.num_rows and [e["event_type"] for e in events].count("flow") == flows.num_rows
    assert events[-1]["event_type"] == "stats"
    assert not list(out.glob("*.partial"))
    torn = tmp_path / "torn.pcap"
    torn.write_bytes((PCAPS / "5greplay_oai.pcap").read_bytes()[:30])
    failed = liaowang("replay", str(torn), "--out", str(tmp_path / "b"), "-q")
    assert failed.returncode == 1 and "damaged at byte" in failed.stderr
    assert liaowang("replay", str(tmp_path / "missing.pcap"), "--out", str(tmp_path / "c")).returncode == 2


def test_generate_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    assert main(["generate", "--packets", "3000", "--seed", "5", "--out", str(a)]) == 0
    assert main(["generate", "--packets", "3000", "--seed", "5", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert main(["replay", str(a), "--out", str(tmp_path / "o"), "-q"]) == 0
    flows = pq.read_table(tmp_path / "o" / "flows.parquet")
    assert set(flows.column("tunnel_type").drop_null().to_pylist()) == {"gtpu"}
    assert {"dns", "tls", "http", "pfcp", "ssh", "modbus"} <= set(flows.column("application_hint").drop_null().to_pylist())


def test_eve_timestamps_match_arrow_strftime() -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ingest.sinks import _iso_column

    ns = np.array([0, 951782400_000000000, 4102444799_999999000, 1709208000_123456789, -86400_000000000,
                   1_700_000_000_000_000_000], dtype=np.int64)
    col = pa.array(ns).cast(pa.timestamp("ns", tz="UTC"))
    ref = pc.strftime(col.cast(pa.timestamp("us", tz="UTC"), safe=False), format="%Y-%m-%dT%H:%M:%S+0000")
    assert _iso_column(col).to_pylist() == ref.to_pylist()


def test_schema_document_is_current() -> None:
    from ingest.schemadoc import main as schemadoc

    assert schemadoc(["--check"]) == 0, "docs/schemas.md is out of date: run python -m ingest.schemadoc"


def test_flows_only_replay_is_a_flow_meter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--flows-only` writes the flows and their EVE events alone, the same flows as a replay without rules,
    less the session each GTP-U flow belongs to (the session table is not kept)."""
    meter, full = tmp_path / "meter", tmp_path / "full"
    assert main(["replay", str(PCAPS), "--out", str(meter), "--flows-only"]) == 0
    assert "none looked for (flows only)" in capsys.readouterr().out
    assert main(["replay", str(PCAPS), "--out", str(full), "--no-rules", "-q"]) == 0
    # and the deployment's pseudonym key (.pseudonym.key): names in flows are scrubbed as in every replay
    assert sorted(p.name for p in meter.iterdir() if not p.name.startswith(".")) == ["eve.json", "flows.parquet"]
    assert (full / "sessions.parquet").exists() and (full / "proto_pfcp.parquet").exists()
    flows, reference = pq.read_table(meter / "flows.parquet"), pq.read_table(full / "flows.parquet")
    assert flows.num_rows == reference.num_rows > 1000
    assert flows.drop_columns(["session_id", "plane"]).equals(reference.drop_columns(["session_id", "plane"]))
    assert flows.column("session_id").null_count == flows.num_rows
    attributed = reference.column("session_id").is_valid().to_pylist()
    assert any(attributed)  # the bundled 5G captures have sessions, so the comparison means something
    planes = zip(flows.column("plane").to_pylist(), reference.column("plane").to_pylist(), attributed)
    assert all(mine == theirs or (session and theirs == "N6") for mine, theirs, session in planes)
    events = [json.loads(line) for line in (meter / "eve.json").read_text().splitlines()]
    assert [e["event_type"] for e in events].count("flow") == flows.num_rows
    assert events[-1]["event_type"] == "stats" and "detect" not in events[-1]["stats"]
    assert events[-1]["stats"]["capture"]["files"] == len(list(PCAPS.glob("*.pcap*")))


def test_a_flow_meter_loads_no_detection_modules(tmp_path: Path) -> None:
    """A `--flows-only` replay imports neither the detection engine, its rules and detectors nor PyYAML
    (~15 ms of its start, before the decoders can begin); a replay with rules does, and finds alerts.  Neither
    loads the intelligence feed readers without `--intel`."""
    code = ("import sys; from console.cli import main; code = main(sys.argv[1:]); "
            "print(code, *(m in sys.modules for m in ('detection.engine', 'detection.rules.loader', 'ingest.detect', "
            "'detection.detectors', 'yaml', 'detection.intel.feeds')))")
    from detection.incidents import load_tactics
    from detection.rules.loader import load_rules
    from detection.trend import TrendConfig

    load_rules(None), load_tactics(), TrendConfig.load()  # the bundled YAML files kept parsed, if not yet
    capture = str(PCAPS / "zeek_ssh_sshguess.pcap")
    for flag, loaded in (("--flows-only", "False"), ("--processes=1", "True")):
        out = subprocess.run([sys.executable, "-c", code, "replay", capture, "--out", str(tmp_path / flag), "-q", flag],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "0" and out[1:5] == [loaded] * 4, (flag, out)
        assert out[5] == "False"  # the bundled rule files are kept parsed: no YAML parser either way
        assert out[6] == "False"  # no feeds: no feed readers
    assert pq.read_table(tmp_path / "--processes=1" / "alerts.parquet").num_rows > 0


def test_flows_only_refuses_detection_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(PCAPS / "arkime_gtp-u.pcap"), "--out", str(tmp_path), "--flows-only",
                 "--rules", "rules"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--flows-only runs no detection: drop --rules" in err
    assert not any(tmp_path.iterdir())


def test_an_interrupted_replay_says_so_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C during a replay: one line and exit code 130, no traceback; its decoders stop and their shared-memory
    files go; no output appears under its final name half-written."""
    import signal
    import time

    from tests.conftest import capture_path

    capture = capture_path("generated_mixed_10k.pcap")
    inputs = []
    for i in range(30):  # long enough to be caught in the middle
        inputs.append(tmp_path / f"copy{i}.pcap")
        os.link(capture, inputs[-1])
    before = {n for n in os.listdir("/dev/shm") if n.startswith("liaowang-")}
    for attempt in range(3):  # an interrupt that lands in a finalizer (__del__) is ignored by Python: again
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "replay", *map(str, inputs), "--out", str(out),
                                 "-q"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not list(out.glob("*.partial")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # its outputs are begun (under *.partial names) once its decoders run
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            break
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "liaowang: interrupted" and "Traceback" not in err
    assert not {n for n in os.listdir("/dev/shm") if n.startswith("liaowang-")} - before
    assert not (out / "flows.parquet").exists()
