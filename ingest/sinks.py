"""Sinks for replay output: Parquet tables and Suricata-EVE-compatible JSON lines.

Same small contract for every sink: ``write(table)`` then ``close()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP", 47: "GRE", 50: "ESP"}


class ParquetSink:
    """Appends tables to one Parquet file (zstd); the file is valid once closed."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self._tmp = path.with_suffix(path.suffix + ".partial")
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._tmp.replace(self.path)  # never leave a half-written file under the final name


def _iso(ts: Any) -> str:
    # Suricata's format: 2024-01-02T03:04:05.123456+0000
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+0000"


class EveSink:
    """``eve.json``: one JSON object per line (flow events now; alerts later; stats last)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_suffix(path.suffix + ".partial")
        self._f = open(self._tmp, "w", encoding="utf-8")
        self.events = 0

    def write_flows(self, flows: pa.Table) -> None:
        if not flows.num_rows:
            return
        us = pa.timestamp("us", tz="UTC")
        flows = flows.set_column(flows.schema.get_field_index("first_seen"), "first_seen",
                                 flows.column("first_seen").cast(us, safe=False))
        flows = flows.set_column(flows.schema.get_field_index("last_seen"), "last_seen",
                                 flows.column("last_seen").cast(us, safe=False))
        cols = flows.select([
            "flow_id", "community_id", "first_seen", "last_seen", "src_ip", "dst_ip", "src_port", "dst_port",
            "ip_proto", "vlan_id", "tunnel_type", "teid", "dst2src_teid", "gtpu_qfi", "tunnel_src_ip",
            "tunnel_dst_ip", "src2dst_packets", "dst2src_packets", "src2dst_bytes", "dst2src_bytes",
            "application_hint", "expiration_reason", "bidirectional_syn_packets", "bidirectional_fin_packets",
            "bidirectional_rst_packets",
        ]).to_pydict()
        lines = []
        for i in range(flows.num_rows):
            first, last = cols["first_seen"][i], cols["last_seen"][i]
            proto = cols["ip_proto"][i]
            ev: dict[str, Any] = {
                "timestamp": _iso(last),
                "flow_id": cols["flow_id"][i],
                "event_type": "flow",
                "src_ip": cols["src_ip"][i],
                "src_port": cols["src_port"][i],
                "dest_ip": cols["dst_ip"][i],
                "dest_port": cols["dst_port"][i],
                "proto": PROTO_NAMES.get(proto, str(proto)),
                "community_id": cols["community_id"][i],
            }
            if cols["vlan_id"][i] is not None:
                ev["vlan"] = [cols["vlan_id"][i]]
            if cols["application_hint"][i]:
                ev["app_proto"] = cols["application_hint"][i]
            ev["flow"] = {
                "pkts_toserver": cols["src2dst_packets"][i],
                "pkts_toclient": cols["dst2src_packets"][i],
                "bytes_toserver": cols["src2dst_bytes"][i],
                "bytes_toclient": cols["dst2src_bytes"][i],
                "start": _iso(first),
                "end": _iso(last),
                "age": int((last - first).total_seconds()),
                "state": "closed" if (cols["bidirectional_fin_packets"][i] or cols["bidirectional_rst_packets"][i])
                else "established" if cols["dst2src_packets"][i] else "new",
                "reason": {"idle": "timeout", "active": "timeout", "tcp_reuse": "forced"}.get(
                    cols["expiration_reason"][i], "shutdown"),
                "alerted": False,
            }
            if cols["tunnel_type"][i]:
                tun: dict[str, Any] = {
                    "src_ip": cols["tunnel_src_ip"][i],
                    "dest_ip": cols["tunnel_dst_ip"][i],
                    "proto": cols["tunnel_type"][i],
                    "depth": 1,
                }
                if cols["teid"][i] is not None:
                    tun["teid"] = cols["teid"][i]
                if cols["dst2src_teid"][i] is not None:
                    tun["teid_toclient"] = cols["dst2src_teid"][i]
                if cols["gtpu_qfi"][i] is not None:
                    tun["qfi"] = cols["gtpu_qfi"][i]
                ev["tunnel"] = tun
            lines.append(json.dumps(ev, separators=(",", ":")))
        self._f.write("\n".join(lines) + "\n")
        self.events += len(lines)

    def write_stats(self, timestamp: Any, stats: dict[str, Any]) -> None:
        ev = {"timestamp": _iso(timestamp), "event_type": "stats", "stats": stats}
        self._f.write(json.dumps(ev, separators=(",", ":")) + "\n")
        self.events += 1

    def close(self) -> None:
        self._f.close()
        self._tmp.replace(self.path)
