"""HTTP/1.x (RFC 9112) request line, Host, User-Agent, Authorization scheme; response status and Server.

Header fields are found with RE2 regular expressions over a bounded prefix of
the payload (pyarrow.compute), vectorized over all candidate packets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import present
from sensors.protocols.packets import Packets, gather_strings, one_of
from sensors.schema import AppProto

PREFIX_BYTES = 2048
METHODS = [b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"CONN", b"PATC", b"TRAC"]
METHOD_WORDS = np.array([int.from_bytes(m, "big") for m in METHODS], dtype=np.uint32)
HTTP_WORD = int.from_bytes(b"HTTP", "big")
#: lookup table: can a payload starting with this byte be HTTP/1 (a method or "HTTP/")?
FIRST_BYTES = np.zeros(256, dtype=bool)
FIRST_BYTES[[m[0] for m in METHODS] + [ord("H")]] = True
#: a request target longer than the prefix read is still a request (and its target is kept, cut)
REQUEST_LINE = r"^(?P<method>[A-Z]{3,8}) (?P<uri>[^ \r\n]+)(?: HTTP/|$)"
HOST = r"(?i)\r\nhost:[ \t]*(?P<v>[^\r\n]*)"
USER_AGENT = r"(?i)\r\nuser-agent:[ \t]*(?P<v>[^\r\n]*)"
AUTH_SCHEME = r"(?i)\r\nauthorization:[ \t]*(?P<v>[A-Za-z0-9_-]+)"  # the scheme only: credentials stay out
SERVER = r"(?i)\r\nserver:[ \t]*(?P<v>[^\r\n]*)"


def dissect(pk: Packets, rows: np.ndarray) -> None:
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 12 <= end
    rows, off, end = rows[ok], off[ok], end[ok]
    word = pk.u32(off)
    req = one_of(word, METHOD_WORDS)
    resp = (word == HTTP_WORD) & (pk.u32(off + 4) >> 8 == int.from_bytes(b"/1.", "big"))
    _responses(pk, rows[resp], off[resp], end[resp])
    rows, off, end = rows[req], off[req], end[req]
    if not len(rows):
        return
    text = gather_strings(pk.buf, len(rows), np.arange(len(rows)), off, np.minimum(end - off, PREFIX_BYTES),
                          keep_line_breaks=True)
    line = pc.extract_regex(text, REQUEST_LINE)
    is_req = present(line)
    r = np.flatnonzero(is_req)
    if not len(r):
        return
    line, text = line.filter(pa.array(is_req)), text.filter(pa.array(is_req))
    pk.put("app_proto", rows[r], AppProto.HTTP)
    pk.put_arrow_str("http_method", rows[r], line.field("method"))
    pk.put_arrow_str("http_uri", rows[r], line.field("uri"))
    for name, pattern in (("http_host", HOST), ("http_user_agent", USER_AGENT), ("http_auth_scheme", AUTH_SCHEME)):
        if pk.wants(name):  # each one a regex over the request's text
            pk.put_arrow_str(name, rows[r], pc.struct_field(pc.extract_regex(text, pattern), "v"))


def _responses(pk: Packets, rows: np.ndarray, off: np.ndarray, end: np.ndarray) -> None:
    digits = np.stack([pk.u8(off + 9 + i).astype(np.int64) - 48 for i in range(3)])
    ok = ((digits >= 0) & (digits <= 9)).all(axis=0) & (pk.u8(off + 8) == 0x20)
    rows, off, end, digits = rows[ok], off[ok], end[ok], digits[:, ok]
    pk.put("app_proto", rows, AppProto.HTTP)
    pk.put("http_status", rows, (digits[0] * 100 + digits[1] * 10 + digits[2]).astype(np.uint16))
    if len(rows) and pk.wants("http_server"):
        text = gather_strings(pk.buf, len(rows), np.arange(len(rows)), off, np.minimum(end - off, PREFIX_BYTES),
                              keep_line_breaks=True)
        pk.put_arrow_str("http_server", rows, pc.struct_field(pc.extract_regex(text, SERVER), "v"))
