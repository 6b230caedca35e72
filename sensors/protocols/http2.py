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
    preface = (end - off >= PREFACE_LEN) & (pk.u64(off) == PREFACE_WORD)
    frame = np.where(preface, off + PREFACE_LEN, off)
    # most segments fail at the first word (length's top byte 0, then a length and a type in range): only
    # those that pass it get the full check
    w0 = pk.u32(frame)
    maybe = preface | ((w0 < (MAX_FRAME + 1) << 8) & ((w0 & 0xFF) <= 9))
    rows, off, end, preface, frame = rows[maybe], off[maybe], end[maybe], preface[maybe], frame[maybe]
    first_ok, ftype, sid = _frame_ok(pk, frame)
    at_end = preface & (frame == end)  # preface alone
    good = at_end | (first_ok & (frame + 9 <= end))
    p = frame.copy()
    settled = at_end.copy()
    for _ in range(MAX_WALK):
        act = np.flatnonzero(good & ~settled)
        if not len(act):
            break
        q = p[act]
        ok_q, t_q, _ = _frame_ok(pk, q)
        flen = (pk.u32(q) >> 8).astype(np.int64)
        nxt = q + 9 + flen
        bad = ~ok_q
        exact = ok_q & (nxt == end[act])
        spans = ok_q & (nxt > end[act]) & one_of(t_q, SPANNING)
        overrun = ok_q & (nxt > end[act]) & ~one_of(t_q, SPANNING)
        short_hdr = ok_q & (nxt < end[act]) & (nxt + 9 > end[act])
        good[act[bad | overrun | short_hdr]] = False
        settled[act[exact | spans]] = True
        p[act] = nxt
    good &= settled
    rows, frame, ftype, sid, preface = rows[good], frame[good], ftype[good], sid[good], preface[good]
    pk.put("app_proto", rows, AppProto.HTTP2)
    pk.put("http2_preface", rows, preface)
    has_frame = frame + 9 <= pk.end[rows]
    pk.put("http2_frame_type", rows[has_frame], ftype[has_frame].astype(np.uint8))
    pk.put("http2_stream_id", rows[has_frame], sid[has_frame])


def _frame_ok(pk: Packets, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w0 = pk.u32(q)
    flen = (w0 >> 8).astype(np.int64)
    ftype = (w0 & 0xFF).astype(np.int64)
    sid_word = pk.u32(q + 5)
    sid = sid_word & 0x7FFFFFFF
    ok = (ftype <= 9) & (flen <= MAX_FRAME) & ((sid_word >> 31) == 0)
    ok &= ~one_of(ftype, STREAM_ZERO) | (sid == 0)
    ok &= ~one_of(ftype, STREAM_NONZERO) | (sid != 0)
    for t, n in FIXED_LEN.items():
        ok &= (ftype != t) | (flen == n)
    ok &= (ftype != 4) | (flen % 6 == 0)  # SETTINGS
    ok &= (ftype != 7) | (flen >= 8)  # GOAWAY
    return ok, ftype, sid
