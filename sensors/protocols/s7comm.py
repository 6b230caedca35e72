"""S7comm (Siemens S7-300/400) on ISO-TSAP, TCP port 102: TPKT (RFC 1006), COTP (ISO 8073)
data TPDU, then the S7 header (protocol id 0x32) and the parameter's function code.

The S7 header is 10 bytes for a Job (ROSCTR 1) and 12 for an Ack-Data (ROSCTR 3),
which adds an error class and code; the parameter's first byte is the function
(0x04 read, 0x05 write, 0x1a-0x1c download, 0x28 PI service, 0x29 PLC stop...).
S7comm-plus (protocol id 0x72) is recognised but not decoded further.
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets, one_of
from sensors.schema import AppProto

PORT = 102
TPKT_VERSION = 3
COTP_DT = 0xF0
S7_ID = 0x32
S7PLUS_ID = 0x72
JOB, ACK_DATA = 1, 3


def dissect(pk: Packets, rows: np.ndarray) -> None:
    rows = rows[(pk.get("src_port", rows) == PORT) | (pk.get("dst_port", rows) == PORT)]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = (off + 7 <= end) & (pk.u8(off) == TPKT_VERSION) & (pk.u16(off + 2) >= 7)
    rows, off, end = rows[ok], off[ok], end[ok]
    pk.put("app_proto", rows, AppProto.S7COMM)
    s7 = off + 5 + pk.u8(off + 4).astype(np.int64)  # after the COTP header (length byte excludes itself)
    data = (pk.u8(off + 5) == COTP_DT) & (s7 + 12 <= end) & one_of(pk.u8(s7), (S7_ID, S7PLUS_ID))
    rows, s7 = rows[data], s7[data]
    rosctr = pk.u8(s7 + 1)
    known = (pk.u8(s7) == S7_ID) & one_of(rosctr, (JOB, ACK_DATA))
    param = np.where(rosctr == ACK_DATA, s7 + 12, s7 + 10)
    known &= param < pk.end[rows]
    pk.put("s7_rosctr", rows[known], rosctr[known])
    pk.put("s7_func", rows[known], pk.u8(param[known]))
