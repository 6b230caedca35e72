"""Stage 3's results as store rows, gathered between writes.

The detection workers (Kafka) and the embedded live sensor store results the
same way: flows, alerts and messages as they come, a sensor_stats row per
packet batch, and the session table and NF inventory as snapshots rewritten at
most every few seconds while they change.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import pyarrow as pa

from ingest.control import ControlPlane
from ingest.detect import Results
from ingest.store.api import Store, sensor_stats_table

#: sessions and the NF inventory are snapshots: rewritten at most this often while a stream runs
SNAPSHOT_TABLES_S = 5.0


@dataclass
class ControlSnapshots:
    """When one stream's session table and NF inventory were last written."""

    written_at: float = 0.0
    messages: int = -1

    def due(self, control: ControlPlane, ended: bool) -> list[tuple[str, pa.Table]]:
        seen = sum(control.messages.values())
        if ended or (seen != self.messages and time.monotonic() - self.written_at >= SNAPSHOT_TABLES_S):
            self.written_at, self.messages = time.monotonic(), seen
            return [("sessions", control.sessions.table()), ("nf_inventory", control.inventory.table())]
        return []


@dataclass
class PendingWrites:
    """Results not yet in the store."""

    tables: dict[str, list[pa.Table]] = field(default_factory=lambda: collections.defaultdict(list))
    read_at: list[float] = field(default_factory=list)

    def add(self, name: str, table: pa.Table) -> None:
        if table.num_rows:
            self.tables[name].append(table)

    def add_results(self, sensor: str, r: Results, snapshots: list[tuple[str, pa.Table]]) -> None:
        self.add("flows", r.flows)
        self.add("alerts", r.alerts)
        self.add("incidents", r.incidents)
        self.add("posture", r.posture)
        self.add("posture_changes", r.posture_changes)
        self.add("trend", r.trend)
        self.add("trend_warnings", r.trend_warnings)
        for name, t in r.protos.items():
            self.add(f"proto_{name}", t)
        if r.batch is not None:
            b = r.batch
            self.add("sensor_stats", sensor_stats_table(sensor, [b]))
            self.read_at.append(b.read_at)
        for name, t in snapshots:
            self.add(name, t)

    def write(self, store: Store) -> dict[str, int]:
        """Rows new to the store per table; then empty."""
        added = store.write_many({name: pa.concat_tables(ts) if len(ts) > 1 else ts[0]
                                  for name, ts in self.tables.items()})
        self.tables.clear()
        self.read_at.clear()
        return added

    def __bool__(self) -> bool:
        return bool(self.tables)


__all__ = ["ControlSnapshots", "PendingWrites", "SNAPSHOT_TABLES_S"]
