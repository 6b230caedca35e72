"""DNS (RFC 1035) on UDP/TCP 53, mDNS 5353, LLMNR 5355: first question name,
type, response code.  The label walk runs over all packets at once, one label
per numpy step."""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto

PORTS = (53, 5353, 5355)
MAX_LABELS = 128
TCP = 6


def dissect(pk: Packets, rows: np.ndarray) -> None:
    sport, dport = pk.get("src_port", rows), pk.get("dst_port", rows)
    rows = rows[one_of(sport, PORTS) | one_of(dport, PORTS)]
    off, end = pk.pl_off[rows].copy(), pk.pl_end[rows]
    is_tcp = pk.get("ip_proto", rows) == TCP
    off[is_tcp] += 2  # TCP messages carry a 2-byte length prefix
    ok = off + 12 < end
    rows, off, end = rows[ok], off[ok], end[ok]
    flags = pk.u16(off + 2)
    qdcount = pk.u16(off + 4)
    ok = (qdcount >= 1) & (qdcount <= 64) & (((flags >> 11) & 0xF) <= 6)
    rows, off, end, flags = rows[ok], off[ok], end[ok], flags[ok]
    pk.put("app_proto", rows, AppProto.DNS)
    pk.put("dns_is_response", rows, (flags >> 15) == 1)
    pk.put("dns_rcode", rows, (flags & 0xF).astype(np.uint8))
    start = off + 12
    cur = start.copy()
    done = np.zeros(len(rows), dtype=bool)  # reached the root label
    active = np.arange(len(rows))
    dots: list[np.ndarray] = []
    for _ in range(MAX_LABELS):
        if not len(active):
            break
        c = cur[active]
        inside = c < end[active]
        length = pk.u8(c).astype(np.int64)
        root = inside & (length == 0)
        done[active[root]] = True
        step = inside & (length > 0) & (length < 64) & (c + 1 + length < end[active])
        dots.append(c[step & (c > start[active])])
        cur[active[step]] = c[step] + 1 + length[step]
        active = active[step]
    named = done
    r = np.flatnonzero(named)
    pk.put_str("dns_qname", rows[r], start[r] + 1, cur[r] - start[r] - 1, np.concatenate(dots) if dots else None)
    q = r[cur[r] + 3 <= end[r]]
    pk.put("dns_qtype", rows[q], pk.u16(cur[q] + 1))
