"""Subscriber identities are stored as keyed-hash pseudonyms, never raw.

IMSIs/SUPIs, MSISDNs/GPSIs, IMEIs and Diameter User-Names are replaced by
``sub-`` + the first 16 hex digits of HMAC-SHA-256(key, canonical identity)
before any table leaves the decoder, so the same subscriber gets the same
pseudonym on every interface (``imsi-208930000000003`` in an SBI path, the
IMSI digits in GTPv2-C, a null-scheme SUCI in NAS) and across replays with the
same key, while the identity cannot be read back without the key.

Text from the wire (URIs, host and query names, user agents, login commands,
banners, every string a dissector keeps) is scrubbed the same way: SBI-style
identities (``imsi-…``, ``msisdn-…``), Chinese IMSIs and mainland mobile numbers
become subscriber pseudonyms (a mobile number as ``msisdn-86…``, as GTPv2-C
carries it, so both name the same subscriber); resident identity and bank card
numbers become ``pii-`` tokens.  A vectorized RE2 pass picks the few rows with
a candidate digit run; only those are rewritten in Python.

The key comes from ``LIAOWANG_PSEUDONYM_KEY`` (any text), else from a random
key kept (mode 0600) in the output directory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import present, true_mask
from sensors.protocols import pii
from sensors.protocols.pii import PiiKind
from sensors.protocols.sbi import NULL_SUCI, SUBSCRIBER

KEY_ENV = "LIAOWANG_PSEUDONYM_KEY"
KEY_FILE = ".pseudonym.key"
#: packet columns holding text from the wire
PACKET_TEXT = ("http_uri", "http_host", "http_user_agent", "http_server", "dns_qname", "tls_sni", "login_command",
               "ssh_banner")
#: what makes a string worth a closer look: an SBI-style identity or a long digit run
CANDIDATE = SUBSCRIBER.pattern + "|" + pii.CANDIDATE
T = TypeVar("T", pa.RecordBatch, pa.Table)
IMSI_DIGITS = re.compile(r"^[0-9]{14,15}$")
NAI_IMSI = re.compile(r"^([0-9]{14,15})@")
#: per proto table, the columns holding an identity, and its kind when the column holds bare digits
COLUMNS: dict[str, dict[str, str]] = {
    "gtpc": {"imsi": "imsi", "msisdn": "msisdn", "mei": "imei"},
    "pfcp": {"supi": "", "gpsi": "", "pei": ""},  # spelled imsi-/msisdn-/imei-<digits> by the dissector
    "ngap": {"supi": ""},
    "sbi": {"supi": ""},
    "diameter": {"user_name": ""},
}


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self._key = key

    @classmethod
    def for_output(cls, out_dir: Path) -> Pseudonymizer:
        env = os.environ.get(KEY_ENV)
        if env:
            return cls(env.encode())
        path = out_dir / KEY_FILE
        if not path.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return cls(path.read_text().strip().encode())

    def subscriber(self, identity: str, kind: str = "") -> str:
        """The pseudonym of one identity (``kind`` names bare digits: imsi, msisdn, imei)."""
        canonical = canonical_identity(identity, kind)
        return "sub-" + hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()[:16]

    def token(self, kind: PiiKind, value: str) -> str:
        """The keyed token of an identifier found in text (``sensors.protocols.pii.find``)."""
        if kind == PiiKind.IMSI:
            return self.subscriber(value, "imsi")
        if kind == PiiKind.MOBILE:
            return self.subscriber("86" + value, "msisdn")
        label = "idcard" if kind == PiiKind.RESIDENT_ID else "card"
        return "pii-" + hmac.new(self._key, f"{label}-{value}".encode(), hashlib.sha256).hexdigest()[:16]

    def scrub(self, text: str) -> str:
        """``text`` with every identity in it replaced by its token."""
        text = SUBSCRIBER.sub(lambda m: self.subscriber(m.group(0)), text)
        found = pii.find(text)
        for kind, start, end, value in reversed(found):
            text = text[:start] + self.token(kind, value) + text[end:]
        return text

    def scrub_packets(self, packets: pa.RecordBatch) -> pa.RecordBatch:
        """The packet table with its wire-text columns scrubbed (before flows, rules and messages see it)."""
        return self._scrubbed(packets, [n for n in PACKET_TEXT if n in packets.schema.names])

    def _scrubbed(self, table: T, names: list[str]) -> T:
        """``table`` with the string columns ``names`` scrubbed."""
        columns = [table.column(n) for n in names]
        for name, before, after in zip(names, columns, self._scrub_columns(columns)):
            if after is not before:
                table = table.set_column(table.schema.get_field_index(name), name, after)
        return table

    def _scrub_columns(self, columns: list[pa.Array | pa.ChunkedArray]) -> list[pa.Array | pa.ChunkedArray]:
        """The columns scrubbed; one regex pass over all their values (compiling it costs more than running it)."""
        filled = [i for i, c in enumerate(columns) if c.null_count < len(c)]
        if not filled:
            return columns
        valid = {i: np.flatnonzero(present(columns[i])) for i in filled}
        values = pa.concat_arrays([_array(columns[i]).take(pa.array(valid[i])) for i in filled])
        hit = true_mask(pc.match_substring_regex(values, CANDIDATE))
        if not hit.any():
            return columns
        out = list(columns)
        start = 0
        for i in filled:
            mine = hit[start:start + len(valid[i])]
            start += len(valid[i])
            if mine.any():
                texts = columns[i].to_pylist()
                for row in valid[i][mine].tolist():
                    texts[row] = self.scrub(texts[row])
                out[i] = pa.array(texts, columns[i].type)
        return out

    def protect(self, name: str, table: pa.Table) -> pa.Table:
        """A ``proto.<name>`` table with its identity columns pseudonymised and its other text scrubbed."""
        columns = COLUMNS.get(name, {})
        for column, kind in columns.items():
            if column not in table.column_names:
                continue
            values = [None if v is None else self.subscriber(v, kind) for v in table.column(column).to_pylist()]
            table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.string()))
        return self._scrubbed(table, [f.name for f in table.schema
                                      if pa.types.is_string(f.type) and f.name not in columns])


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def canonical_identity(identity: str, kind: str = "") -> str:
    """One spelling per subscriber: imsi-<digits>, msisdn-<digits>, imei-<digits>, or the text as it is."""
    identity = identity.strip()
    if kind:
        return f"{kind}-{identity}"
    suci = NULL_SUCI.match(identity)
    if suci:
        return "imsi-" + "".join(suci.groups())
    if IMSI_DIGITS.match(identity):
        return "imsi-" + identity
    nai = NAI_IMSI.match(identity)
    if nai:
        return "imsi-" + nai.group(1)
    return identity
