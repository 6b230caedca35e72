"""HTTP/2 frames (RFC 9113 4.1) recognised on any TCP port, with or without the
connection preface: 5G SBI captures often start mid-connection (h2c).

A segment is HTTP/2 if it starts with the preface, or with a frame header
that is valid (known type, legal stream id for the type, length within the
default SETTINGS_MAX_FRAME_SIZE and fixed lengths where the type has one) and
the following frame headers in the segment are valid too, ending exactly at
the segment end or in a frame that continues in the next segment.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto

PREFACE_WORD = int.from_bytes(b"PRI * HT", "big")
PREFACE_LEN = 24
MAX_FRAME = 16384
MAX_WALK = 8
# frame types: DATA HEADERS PRIORITY RST_STREAM SETTINGS PUSH_PROMISE PING GOAWAY WINDOW_UPDATE CONTINUATION
STREAM_ZERO = (4, 6, 7)  # must be on stream 0
STREAM_NONZERO = (0, 1, 2, 3, 5, 9)
FIXED_LEN = {2: 5, 3: 4, 6: 8, 8: 4}
SPANNING = (0, 1, 9)  # may continue beyond the segment


def dissect(pk: Packets, rows: np.ndarray) -> None:
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = off + 9 <= end
    rows, off, end = rows[ok], off[ok], end[ok]
    # one gather of the first 12 bytes of every candidate (payload bytes are scattered over the chunk: each
    # separate read would fetch them from memory again)
    w = pk.words(off, 3)
    preface = (end - off >= PREFACE_LEN) & (((w[0].astype(np.uint64) << 32) | w[1]) == PREFACE_WORD)
    w0, sid_word = w[0], _sid_word(w[1], w[2])
    if preface.any():  # the first frame follows the preface
        p = np.flatnonzero(preface)
        w0[p], sid_word[p] = _header(pk, off[p] + PREFACE_LEN)
    frame = np.where(preface, off + PREFACE_LEN, off)
    first_ok, ftype, sid = _frame_ok(w0, sid_word)
    at_end = preface & (frame == end)  # preface alone
    good = at_end | (first_ok & (frame + 9 <= end))
    # the walk goes on from the segments whose first frame header is valid (most candidates are not:
    # zero-filled or random payloads), so the later steps see only those
    rows, end, frame, ftype, sid, preface, at_end, flen = (
        x[good] for x in (rows, end, frame, ftype, sid, preface, at_end, (w0 >> 8).astype(np.int64)))
    good = np.ones(len(rows), dtype=bool)
    settled = at_end.copy()
    p = frame + 9 + flen  # the second frame, if the first one ends inside the segment
    _settle(good, settled, np.flatnonzero(~settled), p, end, ftype)
    for _ in range(MAX_WALK - 1):
        act = np.flatnonzero(good & ~settled)
        if not len(act):
            break
        q = p[act]
        w0_q, sid_q = _header(pk, q)
        ok_q, t_q, _ = _frame_ok(w0_q, sid_q)
        good[act[~ok_q]] = False
        act, q, t_q = act[ok_q], q[ok_q], t_q[ok_q]
        p[act] = q + 9 + (w0_q[ok_q] >> 8).astype(np.int64)
        _settle(good, settled, act, p, end, t_q)
    good &= settled
    rows, frame, ftype, sid, preface = rows[good], frame[good], ftype[good], sid[good], preface[good]
    pk.put("app_proto", rows, AppProto.HTTP2)
    pk.put("http2_preface", rows, preface)
    has_frame = frame + 9 <= pk.end[rows]
    pk.put("http2_frame_type", rows[has_frame], ftype[has_frame].astype(np.uint8))
    pk.put("http2_stream_id", rows[has_frame], sid[has_frame])


def _settle(good: np.ndarray, settled: np.ndarray, act: np.ndarray, nxt: np.ndarray, end: np.ndarray,
            ftype: np.ndarray) -> None:
    """Segments ``act`` whose last valid frame (of type ``ftype``) ends at ``nxt``: settled if it ends
    the segment exactly or may continue in the next one; no longer good if it cannot."""
    n, e = nxt[act], end[act]
    spans = one_of(ftype, SPANNING)
    bad = ((n > e) & ~spans) | ((n < e) & (n + 9 > e))  # overrun, or a frame header cut short
    good[act[bad]] = False
    settled[act[(n == e) | ((n > e) & spans)]] = True


def _sid_word(mid: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The stream-id word (bytes 5-8 of a frame header) from its header's second and third words."""
    return ((mid & 0xFFFFFF) << 8) | (last >> 24)


def _header(pk: Packets, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(length and type word, stream-id word) of the frame headers at ``q``."""
    w = pk.words(q, 3)
    return w[0], _sid_word(w[1], w[2])


def _frame_ok(w0: np.ndarray, sid_word: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flen = (w0 >> 8).astype(np.int64)
    ftype = (w0 & 0xFF).astype(np.int64)
    sid = sid_word & 0x7FFFFFFF
    ok = (ftype <= 9) & (flen <= MAX_FRAME) & ((sid_word >> 31) == 0)
    ok &= ~one_of(ftype, STREAM_ZERO) | (sid == 0)
    ok &= ~one_of(ftype, STREAM_NONZERO) | (sid != 0)
    for t, n in FIXED_LEN.items():
        ok &= (ftype != t) | (flen == n)
    ok &= (ftype != 4) | (flen % 6 == 0)  # SETTINGS
    ok &= (ftype != 7) | (flen >= 8)  # GOAWAY
    return ok, ftype, sid
