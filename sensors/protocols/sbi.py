"""5G Service Based Interface: HTTP/2 requests between network functions (3GPP TS 29.500, TS 29.501).

The SBI runs HTTP/2 (RFC 9113); on cleartext h2c its header blocks are HPACK
(RFC 7541) compressed against a dynamic table that each connection direction
builds up from its first request on.  Decoding is therefore stateful and runs
in time order (:class:`SbiDecoder`), one connection direction per decoder.

Captures often start in the middle of a connection, without the preface and
with dynamic-table entries inserted before the capture.  The decoder is
tolerant: a reference to an entry it never saw leaves that field unknown and
marks the row ``headers_incomplete``; later insertions still line up because
HPACK indexes the dynamic table from its newest entry.  Header blocks that span
TCP segments are not reassembled (SBI header blocks are small); DATA bodies are
not read.

A path names the NF service (TS 29.501 4.4.1: ``/{apiName}/{apiVersion}/...``,
e.g. ``/nudm-sdm/v2/imsi-001010000000001/am-data``) and so the NF type that
serves it; the client's NF type is the first token of its ``user-agent``
(TS 29.500 5.2.2.2).
"""

from __future__ import annotations

import collections
import re

import pyarrow as pa
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from sensors.protocols.messages import Messages, select, to_table
from sensors.schema import AppProto

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, CONTINUATION = 1, 9
END_HEADERS, PADDED, PRIORITY = 0x04, 0x08, 0x20
STATIC = HeaderTable.STATIC_TABLE
DEFAULT_TABLE_SIZE = 4096
MAX_CONNECTIONS = 10_000
SERVICE = re.compile(r"^/(n[a-z0-9]+(?:-[a-z0-9]+)+)/")
SUBSCRIBER = re.compile(r"(?:imsi|nai|gci|gli|msisdn|extid)-[0-9A-Za-z@._\-]+"
                        r"|suci-[0-9]+-[0-9]{3}-[0-9]{2,3}-[0-9]+-0-[0-9]+-[0-9]+")
#: a null-scheme SUCI (TS 23.003 2.2B: suci-0-mcc-mnc-routing-0-keyid-msin) carries the IMSI in clear
NULL_SUCI = re.compile(r"^suci-0-([0-9]{3})-([0-9]{2,3})-[0-9]+-0-[0-9]+-([0-9]+)$")
NF_TYPES = ("AMF", "SMF", "UDM", "AUSF", "NRF", "PCF", "UDR", "NSSF", "NEF", "BSF", "CHF", "SMSF", "NWDAF", "SCP",
            "SEPP", "UPF", "LMF", "5G_EIR", "UDSF", "NSSAAF", "GMLC", "AF", "N3IWF")
CLIENT = re.compile(r"^(" + "|".join(NF_TYPES) + r")\b", re.IGNORECASE)
SPECIAL_NF = {"n5g-eir": "5G_EIR"}


class Hpack:
    """One direction's HPACK decoder that survives a missed beginning."""

    def __init__(self) -> None:
        self.table: collections.deque[tuple[bytes | None, bytes | None]] = collections.deque()
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE

    def decode(self, block: bytes) -> tuple[list[tuple[bytes | None, bytes | None]], bool]:
        """Header fields of a block, and whether some were unknown (name or value None)."""
        fields: list[tuple[bytes | None, bytes | None]] = []
        incomplete = False
        pos = 0
        while pos < len(block):
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                name, value = self._entry(index)
                fields.append((name, value))
                incomplete |= name is None
            elif b & 0xE0 == 0x20:  # dynamic table size update
                size, pos = _integer(block, pos, 5)
                self.max_size = size
                self._evict()
            else:
                prefix = 6 if b & 0x40 else 4
                index, pos = _integer(block, pos, prefix)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                fields.append((name, value))
                incomplete |= name is None
                if prefix == 6:
                    self._add(name, value)
        return fields, incomplete

    def _entry(self, index: int) -> tuple[bytes | None, bytes | None]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        i = index - len(STATIC) - 1
        if 0 <= i < len(self.table):
            return self.table[i]
        return None, None  # inserted before the capture started

    def _add(self, name: bytes | None, value: bytes | None) -> None:
        self.table.appendleft((name, value))
        self.size += _entry_size(name, value)
        self._evict()

    def _evict(self) -> None:
        while self.table and self.size > self.max_size:
            self.size -= _entry_size(*self.table.pop())


def _entry_size(name: bytes | None, value: bytes | None) -> int:
    return len(name or b"") + len(value or b"") + 32


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
    raise ValueError("HPACK integer runs past the block")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    huffman = bool(data[pos] & 0x80)
    length, pos = _integer(data, pos, 7)
    if pos + length > len(data):
        raise ValueError("HPACK string runs past the block")
    raw = data[pos:pos + length]
    return (decode_huffman(raw) if huffman else raw), pos + length


class SbiDecoder:
    """Stateful stage: packet batches in time order -> ``proto.sbi`` rows (one per header block)."""

    def __init__(self) -> None:
        self._hpack: collections.OrderedDict[tuple[object, ...], Hpack] = collections.OrderedDict()
        self._pending: dict[tuple[object, ...], tuple[int, bytes]] = {}  # HEADERS awaiting CONTINUATION
        self._paths: dict[tuple[object, ...], dict[int, str]] = {}  # request path per stream, for responses

    def update(self, packets: pa.RecordBatch | pa.Table) -> pa.Table:
        msgs = select(packets, AppProto.HTTP2)
        rows: list[dict[str, object]] = []
        for i, payload in enumerate(msgs.payloads):
            rows.extend(self._segment(msgs, i, payload))
        return to_table("sbi", rows)

    def _segment(self, msgs: Messages, i: int, data: bytes) -> list[dict[str, object]]:
        c = msgs.common(i)
        conn = (c["src_ip"], c["src_port"], c["dst_ip"], c["dst_port"])
        pos = len(PREFACE) if data.startswith(PREFACE) else 0
        out = []
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos:pos + 3], "big")
            ftype, flags = data[pos + 3], data[pos + 4]
            stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            body = data[pos + 9:pos + 9 + length]
            pos += 9 + length
            if len(body) < length:
                break  # continues in the next segment
            if ftype == HEADERS:
                start = (1 if flags & PADDED else 0) + (5 if flags & PRIORITY else 0)
                stop = len(body) - (body[0] if flags & PADDED and body else 0)
                block = body[start:stop]
                if not flags & END_HEADERS:
                    self._pending[conn] = (stream, block)
                    continue
            elif ftype == CONTINUATION and conn in self._pending:
                stream, block = self._pending[conn]
                block += body
                if not flags & END_HEADERS:
                    self._pending[conn] = (stream, block)
                    continue
                del self._pending[conn]
            else:
                continue
            row = self._headers(conn, stream, block)
            if row is not None:
                out.append(dict(msgs.common(i), **row))
        return out

    def _decoder(self, conn: tuple[object, ...]) -> Hpack:
        dec = self._hpack.get(conn)
        if dec is None:
            dec = self._hpack[conn] = Hpack()
            if len(self._hpack) > MAX_CONNECTIONS:
                old, _ = self._hpack.popitem(last=False)
                self._paths.pop(old, None)
                self._pending.pop(old, None)
        else:
            self._hpack.move_to_end(conn)
        return dec

    def _headers(self, conn: tuple[object, ...], stream: int, block: bytes) -> dict[str, object] | None:
        row: dict[str, object] = {"stream_id": stream}
        try:
            fields, incomplete = self._decoder(conn).decode(block)
        except (ValueError, IndexError, HPACKDecodingError) as e:  # a broken block is data, not a crash
            fields, incomplete = [], True
            row["error"] = f"HPACK: {e}"
        headers = {n.decode("latin-1"): (v or b"").decode("utf-8", "replace") for n, v in fields if n is not None}
        row["headers_incomplete"] = incomplete
        row["method"] = headers.get(":method")
        row["authority"] = headers.get(":authority")
        row["user_agent"] = headers.get("user-agent")
        row["content_type"] = headers.get("content-type")
        row["is_request"] = ":method" in headers or ":path" in headers
        reverse = (conn[2], conn[3], conn[0], conn[1])
        if row["is_request"]:
            path = headers.get(":path")
            if path is not None:
                paths = self._paths.setdefault(conn, {})
                paths[stream] = path
                if len(paths) > 1000:
                    del paths[next(iter(paths))]
        else:
            path = self._paths.get(reverse, {}).get(stream)
            status = headers.get(":status")
            row["status"] = int(status) if status and status.isdigit() else None
        row["path"] = path
        if path:
            m = SERVICE.match(path)
            if m:
                row["service"] = m.group(1)
                row["nf_type"] = nf_type_of(m.group(1))
            sub = SUBSCRIBER.search(path)
            if sub:
                row["supi"] = sub.group(0)
                suci = NULL_SUCI.match(sub.group(0))
                if suci:
                    row["supi"] = "imsi-" + "".join(suci.groups())
        ua = headers.get("user-agent")
        if ua:
            m = CLIENT.match(ua)
            if m:
                row["client_nf_type"] = m.group(1).upper()
        return row


def nf_type_of(service: str) -> str:
    """The NF type serving an SBI service: nudm-sdm -> UDM."""
    api = service.split("-")[0] if not service.startswith("n5g-") else "n5g-eir"
    return SPECIAL_NF.get(api, api[1:].upper())


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.sbi`` of one batch decoded on its own (a fresh HPACK state); the replay keeps one decoder."""
    return SbiDecoder().update(packets)
