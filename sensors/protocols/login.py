"""Cleartext login commands of FTP (RFC 959), POP3 (RFC 1939), IMAP (RFC 9051) and SMTP AUTH (RFC 4954).

Only the command word is kept (USER, PASS, LOGIN...): whether credentials
cross the wire in clear is the finding; the credentials themselves are never
copied out of the packet.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sensors.masks import present
from sensors.protocols.packets import Packets, gather_strings
from sensors.schema import AppProto

PORT_APPS = {21: AppProto.FTP, 110: AppProto.MAIL, 143: AppProto.MAIL, 25: AppProto.MAIL, 587: AppProto.MAIL}
PORTS = np.array(list(PORT_APPS), dtype=np.uint16)
APP_OF_PORT = np.zeros(65536, dtype=np.uint8)
APP_OF_PORT[PORTS] = list(PORT_APPS.values())
MAX_LINE = 64
# FTP/POP3 "USER x", "PASS x", "APOP x y"; IMAP "tag LOGIN x y", "tag AUTHENTICATE PLAIN"; SMTP "AUTH PLAIN ..."
COMMAND = r"^(?:[A-Za-z0-9.]{1,20} )?(?P<cmd>(?i:USER|PASS|APOP|LOGIN|AUTHENTICATE|AUTH)) "


def dissect(pk: Packets, rows: np.ndarray) -> None:
    dport = pk.get("dst_port", rows)
    rows = rows[np.isin(dport, PORTS)]
    if not len(rows):
        return
    off, end = pk.pl_off[rows], pk.pl_end[rows]
    text = gather_strings(pk.buf, len(rows), np.arange(len(rows)), off, np.minimum(end - off, MAX_LINE),
                          keep_line_breaks=True)
    cmd = pc.utf8_upper(pc.struct_field(pc.extract_regex(text, COMMAND), "cmd"))
    hit = present(cmd)
    if not hit.any():
        return
    rows = rows[hit]
    pk.put("app_proto", rows, APP_OF_PORT[pk.get("dst_port", rows)])
    pk.put_arrow_str("login_command", rows, cmd.filter(pa.array(hit)))
