from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from detection.flows.assembler import FlowAssembler
from sensors.capture.source import read_frames
from sensors.decode import decode

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps" / "shared"
GOLDEN = Path(__file__).resolve().parent / "golden"


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
