"""Sinks for replay output: Parquet tables and Suricata-EVE-compatible JSON lines.

Same small contract for every sink: ``write(table)`` then ``close()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pyarrow.parquet as pq

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP", 47: "GRE", 50: "ESP"}


class ParquetSink:
    """Appends tables to one Parquet file (zstd); the file is valid once closed.

    Small tables are gathered into row groups of at least ``row_group_rows``:
    each row group costs a fixed amount per column, whatever its size.
    ``dictionary``: dictionary-encode columns (Parquet's default).  Off for tables of mostly
    distinct numbers, like flows: there it costs ~20% of the write and the file comes out larger.
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 16384, dictionary: bool = True) -> None:
        self.path = path
        self._tmp = path.with_suffix(path.suffix + ".partial")
        self._schema, self._dictionary = schema, dictionary
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._row_group_rows = row_group_rows
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self.rows += table.num_rows
            if self._pending_rows >= self._row_group_rows:
                self._flush()

    def _opened(self) -> pq.ParquetWriter:
        # opened at the first write: pyarrow.parquet (and the filesystems it loads, ~15 ms) is imported
        # there, on a writer thread once a replay's decoders run, not before they can start
        if self._writer is None:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd",
                                            use_dictionary=self._dictionary)
        return self._writer

    def _flush(self) -> None:
        if self._pending:
            self._opened().write_table(pa.concat_tables(self._pending), row_group_size=max(self._pending_rows, 1))
            self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self._opened().close()
        self._tmp.replace(self.path)  # never leave a half-written file under the final name


def _iso(ts: Any) -> str:
    # Suricata's format: 2024-01-02T03:04:05.123456+0000
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+0000"


ISO_WIDTH = len("2024-01-02T03:04:05.123456+0000")


def _digits(out: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    for k in range(width - 1, -1, -1):
        out[:, col + k] = 48 + value % 10
        value = value // 10


def _iso_column(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Suricata-style UTC timestamps, formatted with integer arithmetic (Arrow's strftime is ~30x slower)."""
    us = np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False)) // 1000
    days, us_of_day = np.divmod(us, 86_400_000_000)
    # civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    z = days + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    out = np.empty((len(us), ISO_WIDTH), dtype=np.uint8)
    out[:] = np.frombuffer(b"0000-00-00T00:00:00.000000+0000", dtype=np.uint8)
    sec, frac = np.divmod(us_of_day, 1_000_000)
    for pos, value, width in ((0, year, 4), (5, month, 2), (8, day, 2), (11, sec // 3600, 2),
                              (14, sec // 60 % 60, 2), (17, sec % 60, 2), (20, frac, 6)):
        _digits(out, pos, value, width)
    offsets = np.arange(len(us) + 1, dtype=np.int32) * ISO_WIDTH
    return pa.StringArray.from_buffers(len(us), pa.py_buffer(offsets), pa.py_buffer(out))


def _text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.cast(pa.string())


def _join(*parts: Any) -> pa.Array:
    """Concatenate literal strings and string columns; a null column makes the whole piece null."""
    return pc.binary_join_element_wise(*parts, "")


def _lookup(col: pa.ChunkedArray | pa.Array, mapping: dict[str, str], default: str) -> pa.Array:
    keys = pa.array(list(mapping))
    idx = pc.fill_null(pc.index_in(col, value_set=keys), len(mapping))
    return pa.array([*mapping.values(), default]).take(idx)


class EveSink:
    """``eve.json``: one JSON object per line (flow events now; alerts later; stats last).

    Flow events are assembled column-wise with Arrow string kernels: every value
    in them is a number or text we produced (addresses, names from fixed sets,
    base64), so no JSON escaping is needed.
    """

    def __init__(self, path: Path, batch_rows: int = 16384) -> None:
        self.path = path
        self._tmp = path.with_suffix(path.suffix + ".partial")
        self._f = open(self._tmp, "wb")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._batch_rows = batch_rows  # the string kernels cost per call: format many flows at once
        self.events = 0

    def write_flows(self, flows: pa.Table) -> None:
        if flows.num_rows:
            self._pending.append(flows)
            self._pending_rows += flows.num_rows
            if self._pending_rows >= self._batch_rows:
                self._flush_flows()

    def _flush_flows(self) -> None:
        if not self._pending:
            return
        flows = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        c = flows.column
        quoted = lambda name: _join('"', c(name), '"')  # noqa: E731
        proto = _lookup(_text(c("ip_proto")), {str(k): v for k, v in PROTO_NAMES.items()}, "")
        proto = pc.if_else(pc.equal(proto, ""), _text(c("ip_proto")), proto)
        closed = pc.or_(pc.greater(c("bidirectional_fin_packets"), 0), pc.greater(c("bidirectional_rst_packets"), 0))
        state = pc.if_else(closed, "closed", pc.if_else(pc.greater(c("dst2src_packets"), 0), "established", "new"))
        reason = _lookup(c("expiration_reason"), {"idle": "timeout", "active": "timeout", "tcp_reuse": "forced",
                                                        "evicted": "forced"},
                         "shutdown")
        age = pc.divide(pc.subtract(c("last_seen").cast(pa.int64()), c("first_seen").cast(pa.int64())), 1_000_000_000)
        tunnel = _join(
            ',"tunnel":{"src_ip":', quoted("tunnel_src_ip"), ',"dest_ip":', quoted("tunnel_dst_ip"),
            ',"proto":', quoted("tunnel_type"), ',"depth":1',
            pc.fill_null(_join(',"teid":', _text(c("teid"))), ""),
            pc.fill_null(_join(',"teid_toclient":', _text(c("dst2src_teid"))), ""),
            pc.fill_null(_join(',"qfi":', _text(c("gtpu_qfi"))), ""),
            "}",
        )
        end = _iso_column(c("last_seen"))  # the event's timestamp and the flow's end
        line = _join(
            '{"timestamp":"', end, '","flow_id":', _text(c("flow_id")),
            ',"event_type":"flow","src_ip":', quoted("src_ip"), ',"src_port":', _text(c("src_port")),
            ',"dest_ip":', quoted("dst_ip"), ',"dest_port":', _text(c("dst_port")),
            ',"proto":"', proto, '","community_id":', quoted("community_id"),
            pc.fill_null(_join(',"vlan":[', _text(c("vlan_id")), "]"), ""),
            pc.fill_null(_join(',"app_proto":', quoted("application_hint")), ""),
            ',"flow":{"pkts_toserver":', _text(c("src2dst_packets")), ',"pkts_toclient":', _text(c("dst2src_packets")),
            ',"bytes_toserver":', _text(c("src2dst_bytes")), ',"bytes_toclient":', _text(c("dst2src_bytes")),
            ',"start":"', _iso_column(c("first_seen")), '","end":"', end,
            '","age":', _text(age), ',"state":"', state, '","reason":"', reason, '","alerted":false}',
            pc.fill_null(tunnel, ""), "}\n",
        )
        for chunk in (line.chunks if isinstance(line, pa.ChunkedArray) else [line]):
            # the lines end in newlines and lie back to back in the array's data buffer
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=4 * chunk.offset)
            self._f.write(chunk.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]])
        self.events += flows.num_rows

    def write_alerts(self, alerts: pa.Table) -> None:
        """EVE ``alert`` events (few: one per alert episode), with the ``liaowang`` warning object."""
        for c in ("first_seen", "last_seen"):  # nanoseconds: Python's datetime would refuse them
            alerts = alerts.set_column(alerts.schema.get_field_index(c), c, _iso_column(alerts.column(c)))
        for a in alerts.to_pylist():
            ev: dict[str, Any] = {"timestamp": a["first_seen"], "event_type": "alert"}
            if a["flow_id"] is not None:
                ev["flow_id"] = a["flow_id"]
            ev.update({"src_ip": a["src_ip"], "src_port": a["src_port"], "dest_ip": a["dst_ip"],
                       "dest_port": a["dst_port"], "proto": PROTO_NAMES.get(a["ip_proto"], str(a["ip_proto"]))})
            if a["community_id"]:
                ev["community_id"] = a["community_id"]
            if a["tunnel_src_ip"]:
                ev["tunnel"] = {"src_ip": a["tunnel_src_ip"], "dest_ip": a["tunnel_dst_ip"], "depth": 1,
                                **({"teid": a["teid"]} if a["teid"] is not None else {})}
            ev["alert"] = {"action": "allowed", "gid": 1, "signature_id": a["signature_id"], "rev": 1,
                           "signature": a["signature"], "category": a["category"], "severity": a["severity"]}
            ev["liaowang"] = {"alert_id": a["alert_id"], "level": a["level"], "detector": a["detector"],
                              "rule_id": a["rule_id"], "score": a["score"], "tags": a["tags"],
                              "count": a["event_count"], "first_seen": a["first_seen"], "last_seen": a["last_seen"],
                              "evidence": json.loads(a["evidence"])}
            if a["detail"] is not None:
                ev["liaowang"]["detail"] = a["detail"]
            if a.get("session"):
                ev["liaowang"]["session"] = json.loads(a["session"])
            self._f.write((json.dumps(ev, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
            self.events += 1

    def write_stats(self, timestamp: Any, stats: dict[str, Any]) -> None:
        self._flush_flows()
        ev = {"timestamp": _iso(timestamp), "event_type": "stats", "stats": stats}
        self._f.write((json.dumps(ev, separators=(",", ":")) + "\n").encode())
        self.events += 1

    def close(self) -> None:
        self._flush_flows()
        self._f.close()
        self._tmp.replace(self.path)
