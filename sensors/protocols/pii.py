"""Personal data in cleartext payloads: Chinese resident identity numbers (GB 11643, ISO 7064
MOD 11-2 check digit), mainland mobile numbers, IMSI/SUPI (3GPP TS 23.003) and bank card
numbers (Luhn check).

Only the segments that open a cleartext message are scanned: HTTP request and
response heads with the start of their bodies (form posts, API calls and replies,
SBI on HTTP/1.1), and mail and FTP traffic, up to ``MAX_SCAN`` bytes each.  Later
segments of a large transfer are not: that takes stream reassembly, and scanning
every payload byte would cost the sensor its line rate.  What is found is kept
masked (GB/T 35273 style: ``110105********002X``, ``138****5678``), never as the
raw value, so the packet table, alerts and stores carry the finding and not the
data.

One RE2 pass over all candidate payloads of a batch picks the few rows with a
digit run of a plausible length; the check digits and number plans are then
validated on those rows only.
"""

from __future__ import annotations

import enum
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.protocols.packets import Packets, gather_strings

MAIL_FTP_PORTS = np.zeros(65536, dtype=bool)
MAIL_FTP_PORTS[[21, 25, 110, 143, 587]] = True
MAX_SCAN = 1500  # bytes of each payload scanned: one segment
MAX_FINDINGS = 4  # masked samples kept per packet

# a run of 11-19 digits (optionally an ID's final X) standing alone, not inside a longer word
# (hex ETags and hashes hold digit runs); or a SUPI
CANDIDATE = r"(?:^|[^0-9A-Za-z])(?:[0-9]{11,19}[Xx]?|imsi-[0-9]{5,15})(?:[^0-9A-Za-z]|$)"
_RUNS = re.compile(r"(?<![0-9A-Za-z])(?:imsi-(?P<supi>[0-9]{5,15})|(?P<digits>[0-9]{11,19})(?P<x>[Xx]?))"
                   r"(?![0-9A-Za-z])")
_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = "10X98765432"
_MOBILE = re.compile(r"1(?:3[0-9]|4[5-9]|5[0-35-9]|6[2567]|7[0-8]|8[0-9]|9[0-35-9])[0-9]{8}")
_CARD_PREFIX = re.compile(r"(?:62|4|5[1-5]|3[47]|35)")
# China's mobile country code and its networks' codes (ITU-T E.212)
_CN_IMSI = re.compile(r"460(?:0[0-9]|1[1-5]|20)[0-9]{10}")


class PiiKind(enum.IntFlag):
    RESIDENT_ID = 1
    MOBILE = 2
    IMSI = 4
    BANK_CARD = 8


#: (head, tail) characters shown when masked
MASKS = {PiiKind.RESIDENT_ID: (6, 4), PiiKind.MOBILE: (3, 4), PiiKind.IMSI: (5, 3), PiiKind.BANK_CARD: (6, 4)}


def dissect(pk: Packets, rows: np.ndarray) -> None:
    """``rows``: TCP packets with payload, after the application dissectors."""
    http_head = pk.has("http_method", rows) | pk.has("http_status", rows)
    mail_ftp = MAIL_FTP_PORTS[pk.get("src_port", rows)] | MAIL_FTP_PORTS[pk.get("dst_port", rows)]
    rows = rows[http_head | mail_ftp]
    if not len(rows):
        return
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    text = gather_strings(pk.buf, len(rows), np.arange(len(rows)), off, np.minimum(end - off, MAX_SCAN))
    hit = np.flatnonzero(np.asarray(pc.match_substring_regex(text, CANDIDATE).to_numpy(zero_copy_only=False)))
    if not len(hit):
        return
    kinds = np.zeros(len(hit), dtype=np.uint8)
    masked: list[str | None] = []
    for i, payload in enumerate(text.take(pa.array(hit)).to_pylist()):
        found = scan(payload)
        for kind, _ in found:
            kinds[i] |= kind
        shown = list(dict.fromkeys(f"{str(kind.name).lower()}:{m}" for kind, m in found))  # repeats once
        masked.append(" ".join(shown[:MAX_FINDINGS]) or None)
    keep = kinds > 0
    if not keep.any():
        return
    rows = rows[hit[keep]]
    pk.put("pii_kinds", rows, kinds[keep])
    pk.put_arrow_str("pii_masked", rows, pa.array([m for m, k in zip(masked, keep) if k], pa.string()))


def scan(text: str) -> list[tuple[PiiKind, str]]:
    """Every valid identifier in ``text``, masked, in order of appearance."""
    return [(kind, mask(value, *MASKS[kind])) for kind, _, _, value in find(text)]


def find(text: str) -> list[tuple[PiiKind, int, int, str]]:
    """Every valid identifier in ``text``: (kind, start, end, value), in order of appearance.

    An IMSI's value is its digits (``imsi-`` dropped), a resident ID's check character upper case.
    """
    out = []
    for m in _RUNS.finditer(text):
        if m.group("supi"):
            out.append((PiiKind.IMSI, m.start(), m.end(), m.group("supi")))
            continue
        digits, x = m.group("digits"), m.group("x")
        if len(digits) == 17 and x or len(digits) == 18 and not x:
            number = digits + x.upper()
            if resident_id_valid(number):
                out.append((PiiKind.RESIDENT_ID, m.start(), m.end(), number))
                continue
        if x:
            continue
        if len(digits) == 11 and _MOBILE.fullmatch(digits):
            out.append((PiiKind.MOBILE, m.start(), m.end(), digits))
        elif len(digits) == 15 and _CN_IMSI.fullmatch(digits):
            out.append((PiiKind.IMSI, m.start(), m.end(), digits))
        elif 15 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_valid(digits):
            out.append((PiiKind.BANK_CARD, m.start(), m.end(), digits))
    return out


def resident_id_valid(number: str) -> bool:
    """An 18-character resident identity number: region, birth date and MOD 11-2 check character."""
    if not ("1" <= number[0] <= "8") or not number[:17].isdigit():
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    total = int(np.dot(_ID_WEIGHTS, np.frombuffer(number[:17].encode(), dtype=np.uint8) - ord("0")))
    return _ID_CHECK[total % 11] == number[17]


def luhn_valid(digits: str) -> bool:
    d = np.frombuffer(digits.encode(), dtype=np.uint8)[::-1] - ord("0")
    doubled = d[1::2] * 2
    return int(d[::2].sum() + (doubled - 9 * (doubled > 9)).sum()) % 10 == 0


def mask(value: str, head: int, tail: int) -> str:
    return value[:head] + "*" * (len(value) - head - tail) + value[-tail:]
