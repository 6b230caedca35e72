"""Subscriber identities are stored as keyed-hash pseudonyms, never raw.

IMSIs/SUPIs, MSISDNs/GPSIs, IMEIs and Diameter User-Names are replaced by
``sub-`` + the first 16 hex digits of HMAC-SHA-256(key, canonical identity)
before any table leaves the decoder, so the same subscriber gets the same
pseudonym on every interface (``imsi-208930000000003`` in an SBI path, the
IMSI digits in GTPv2-C, a null-scheme SUCI in NAS) and across replays with the
same key, while the identity cannot be read back without the key.

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

import pyarrow as pa

from sensors.protocols.sbi import NULL_SUCI, SUBSCRIBER

KEY_ENV = "LIAOWANG_PSEUDONYM_KEY"
KEY_FILE = ".pseudonym.key"
IMSI_DIGITS = re.compile(r"^[0-9]{14,15}$")
NAI_IMSI = re.compile(r"^([0-9]{14,15})@")
#: per proto table, the columns holding an identity, and its kind when the column holds bare digits
COLUMNS: dict[str, dict[str, str]] = {
    "gtpc": {"imsi": "imsi", "msisdn": "msisdn", "mei": "imei"},
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

    def protect(self, name: str, table: pa.Table) -> pa.Table:
        """A ``proto.<name>`` table with its identity columns (and SBI paths) pseudonymised."""
        columns = COLUMNS.get(name, {})
        for column, kind in columns.items():
            if column not in table.column_names:
                continue
            values = [None if v is None else self.subscriber(v, kind) for v in table.column(column).to_pylist()]
            table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.string()))
        if name == "sbi" and "path" in table.column_names:
            paths = [None if p is None else SUBSCRIBER.sub(lambda m: self.subscriber(m.group(0)), p)
                     for p in table.column("path").to_pylist()]
            table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
        return table


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
