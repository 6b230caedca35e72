from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from detection.flows.assembler import FlowAssembler
from sensors.capture import extract
from sensors.capture.source import read_frames
from sensors.decode import decode

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps" / "shared"
GOLDEN = Path(__file__).resolve().parent / "golden"


#: generated captures the golden files were made from: name -> (packets, seed, sha256)
GENERATED = {  # the "short-flows" profile: many small flows per packet
    "generated_mixed_10k.pcap": (10_000, 2, "85ed669d99ebd1b9eef1974e73c6a63af85fb7e69b959ed9370d78bc0cfcd649"),
}
_made: dict[str, Path] = {}


def frame_tuples(paths: list[Path]) -> list[tuple[int, int, int, bytes]]:
    """Every frame of ``paths`` as (ts ns, wire length, link type, bytes), in file order."""
    return [t for p in paths for f in read_frames(str(p)) for t in extract.frame_tuples(f)]


def capture_path(name: str) -> Path:
    """A bundled capture, or a generated one (made once per test session, byte-identical to the golden's)."""
    if name not in GENERATED:
        return PCAPS / name
    if name not in _made:
        from sensors.generate.mixed import generate

        packets, seed, digest = GENERATED[name]
        path = Path(tempfile.mkdtemp(prefix="liaowang-gen-")) / name
        generate(path, packets, seed=seed, profile="short-flows")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the generator's output changed"
        _made[name] = path
    return _made[name]


def decode_file(path: Path, chunk_bytes: int = 32 << 20) -> pa.Table:
    return pa.Table.from_batches([decode(b) for b in read_frames(str(path), chunk_bytes)])


def flows_of(paths: list[Path], chunk_bytes: int = 32 << 20, **kw: float) -> pa.Table:
    fa = FlowAssembler(**kw)
    out = [fa.update(decode(b)) for p in paths for b in read_frames(str(p), chunk_bytes)]
    out.append(fa.flush())
    return pa.concat_tables(out)


@pytest.fixture(scope="session")
def bundled() -> list[Path]:
    return sorted(PCAPS.iterdir())


@pytest.fixture(scope="session")
def console_store(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.console_fixtures import build_store

    root = tmp_path_factory.mktemp("console")
    store, state = build_store(root)
    return store, state, root
