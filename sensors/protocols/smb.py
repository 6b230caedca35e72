"""SMB over TCP 445/139 (MS-SMB, MS-SMB2): which dialect family a message uses.

A 4-byte NetBIOS session header (type 0x00) precedes the SMB header, whose
protocol id is \\xffSMB for SMBv1, \\xfeSMB for SMB2/3 and \\xfdSMB for an SMB3
transform (encrypted) header.  SMBv1 on the wire is the exposure (MS17-010).
"""

from __future__ import annotations

import numpy as np

from sensors.protocols.packets import Packets
from sensors.schema import AppProto

PORTS = np.array([445, 139], dtype=np.uint16)
SMB_TAIL = int.from_bytes(b"SMB", "big")
VERSIONS = {0xFF: 1, 0xFE: 2, 0xFD: 3}


def dissect(pk: Packets, rows: np.ndarray) -> None:
    sport, dport = pk.get("src_port", rows), pk.get("dst_port", rows)
    on_port = np.isin(sport, PORTS) | np.isin(dport, PORTS)
    rows = rows[on_port]
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    ok = (off + 8 <= end) & (pk.u8(off) == 0)  # NetBIOS session message
    rows, off = rows[ok], off[ok]
    proto = pk.u32(off + 4)
    version = np.zeros(len(rows), dtype=np.uint8)
    for marker, v in VERSIONS.items():
        version[proto == (marker << 24 | SMB_TAIL)] = v
    hit = version > 0
    pk.put("app_proto", rows[hit], AppProto.SMB)
    pk.put("smb_version", rows[hit], version[hit])
