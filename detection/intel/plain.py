"""Plain lists: one indicator per line, ``#`` starts a comment.

A line is ``value`` or ``value,type`` (CSV; further columns are ignored, a
header line naming ``value`` is skipped).  Without a type the feed's ``type``
is used, else the value's shape tells (an address or network, a URL, a JA4, a
SHA-1/SHA-256, a domain).  32 hex digits are a JA3 or an MD5: such lists must
say which.  An indicator's date (for ``max_age_days``) is the file's.
"""

from __future__ import annotations

import csv
import io

from detection.intel.indicators import TYPES, Parsed, guess_type


def parse(text: str, default_level: str, max_age_ns: int | None = None, kind: str | None = None,
          dated_ns: int | None = None) -> Parsed:
    out = Parsed(max_age_ns=max_age_ns)
    for fields in csv.reader(io.StringIO(text)):
        if not fields or not fields[0].strip() or fields[0].lstrip().startswith("#"):
            continue
        value = fields[0].split("#", 1)[0].strip()
        if value.lower() == "value":
            continue
        given = fields[1].strip().lower() if len(fields) > 1 and fields[1].strip() else kind
        this = given or guess_type(value)
        if this is None:
            out.skip("type unknown (32 hex digits: JA3 or MD5?)" if len(value) == 32 else "type unknown")
            continue
        if this not in TYPES:
            out.skip(f"type {this}")
            continue
        out.add(this, value, default_level, "", dated_ns=dated_ns)
    return out
