"""SSH identification string (RFC 4253 4.2): 'SSH-protoversion-softwareversion'."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from sensors.protocols.packets import Packets, gather_strings
from sensors.schema import AppProto

SSH_WORD = int.from_bytes(b"SSH-", "big")
MAX_BANNER = 255


def dissect(pk: Packets, rows: np.ndarray) -> None:
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = (off + 8 <= end)
    rows, off, end = rows[ok], off[ok], end[ok]
    hit = pk.u32(off) == SSH_WORD
    rows, off, end = rows[hit], off[hit], end[hit]
    if not len(rows):
        return
    text = gather_strings(pk.buf, len(rows), np.arange(len(rows)), off, np.minimum(end - off, MAX_BANNER),
                          keep_line_breaks=True)
    banner = pc.extract_regex(text, r"^(?P<v>SSH-[^\r\n]+)").field("v")
    pk.put("app_proto", rows, AppProto.SSH)
    pk.put_arrow_str("ssh_banner", rows, banner)
