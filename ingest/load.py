"""Loading a replay's output directory into a store (``liaowang replay … --store``).

The replay writes its Parquet files first (they are the record of the run);
then every table is streamed into the store in batches.  Rows have
deterministic ids, so loading the same replay twice adds nothing.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.replay import ReplaySummary
from ingest.store.api import TABLES, Store, sensor_stats_table

BATCH_ROWS = 262_144


def load_output(out_dir: Path, store: Store, summary: ReplaySummary | None = None,
                sensor: str | None = None) -> dict[str, int]:
    """Rows new to the store per table."""
    added: dict[str, int] = {}
    for name in TABLES:
        path = out_dir / f"{name}.parquet"
        if not path.exists():
            continue
        added[name] = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            added[name] += store.write(name, pa.Table.from_batches([batch]))
    if summary is not None and summary.batches:
        added["sensor_stats"] = store.write("sensor_stats", sensor_stats(summary, sensor or socket.gethostname()))
    return added


def sensor_stats(summary: ReplaySummary, sensor: str) -> pa.Table:
    # files by absolute path: the console cuts flows' packets out of them, from any working directory
    return sensor_stats_table(sensor, [dataclasses.replace(b, source=str(Path(b.source).resolve()))
                                       if Path(b.source).is_file() else b for b in summary.batches])
