"""Link layers: Ethernet II with 802.1Q/802.1ad/QinQ tags and MPLS (IEEE 802.3,
RFC 3032), Linux cooked capture v1/v2, BSD loopback/null, raw IP.

Every function returns ``(rows, l3_off, ethertype)`` for the next layer; the
ethertype of raw/loopback frames is inferred (0x0800 IPv4, 0x86DD IPv6).
"""

from __future__ import annotations

import numpy as np

from sensors.capture import frames as lt
from sensors.protocols.packets import Packets, kept, one_of
from sensors.schema import AppProto, DecodeStatus

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MPLS_TYPES = (0x8847, 0x8848)
MAX_TAGS = 4
MAX_LABELS = 8
#: link type given by the pcapng reader to packets naming an undescribed interface
UNKNOWN_INTERFACE_LINK = 0xFFFF

Layer = tuple[np.ndarray, np.ndarray, np.ndarray]


def dissect_frames(pk: Packets) -> Layer:
    """Dispatch every frame on its link type."""
    link = pk.frames.link_type
    outs: list[Layer] = []
    handled = np.zeros(pk.n, dtype=bool)
    for codes, fn in (
        ((lt.LINKTYPE_ETHERNET,), ethernet),
        ((lt.LINKTYPE_LINUX_SLL,), linux_sll),
        ((lt.LINKTYPE_LINUX_SLL2,), linux_sll2),
        ((lt.LINKTYPE_NULL, lt.LINKTYPE_LOOP), loopback),
        ((lt.LINKTYPE_RAW, lt.LINKTYPE_RAW_BSD, lt.LINKTYPE_RAW_OPENBSD, lt.LINKTYPE_IPV4, lt.LINKTYPE_IPV6), raw_ip),
    ):
        m = one_of(link, codes)
        if m.any():
            rows = np.flatnonzero(m)
            handled |= m
            outs.append(fn(pk, rows, pk.start[rows]))
    if not handled.all():
        orphan = link == UNKNOWN_INTERFACE_LINK
        pk.fail(np.flatnonzero(orphan), DecodeStatus.UNKNOWN_INTERFACE)
        pk.fail(np.flatnonzero(~handled & ~orphan), DecodeStatus.UNKNOWN_LINK_TYPE)
    if not outs:
        e = np.empty(0, dtype=np.int64)
        return e, e, e
    return (
        np.concatenate([o[0] for o in outs]),
        np.concatenate([o[1] for o in outs]),
        np.concatenate([o[2] for o in outs]),
    )


def ethernet(pk: Packets, rows: np.ndarray, off: np.ndarray) -> Layer:
    ok = pk.fits(rows, off, 14)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = kept(ok, rows, off)
    etype = pk.u16(off + 12).astype(np.int64)
    return _after_ethertype(pk, rows, off + 14, etype)


def _after_ethertype(pk: Packets, rows: np.ndarray, off: np.ndarray, etype: np.ndarray) -> Layer:
    """VLAN tags and MPLS labels, then record the final ethertype."""
    depth = np.zeros(len(rows), dtype=np.uint8)
    for _ in range(MAX_TAGS):
        tagged = one_of(etype, VLAN_TPIDS)
        if not tagged.any():
            break
        t = np.flatnonzero(tagged)
        short = ~pk.fits(rows[t], off[t], 4)
        if short.any():
            pk.fail(rows[t[short]], DecodeStatus.TRUNCATED)
            etype[t[short]] = -1
            t = t[~short]
        first = t[depth[t] == 0]
        pk.put("vlan_id", rows[first], pk.u16(off[first]) & 0x0FFF)
        depth[t] += 1
        etype[t] = pk.u16(off[t] + 2)
        off[t] += 4
    tagged_rows = depth > 0  # untagged frames stay null whatever else is in the batch
    if tagged_rows.any():
        pk.put("vlan_depth", rows[tagged_rows], depth[tagged_rows])
    mpls = np.flatnonzero(one_of(etype, MPLS_TYPES))
    if len(mpls):
        _mpls(pk, rows, off, etype, mpls)
    keep = etype >= 0
    rows, off, etype = rows[keep], off[keep], etype[keep]
    pk.put("eth_type", rows, etype.astype(np.uint16))
    arp = etype == ETH_ARP
    if arp.any():
        pk.put("app_proto", rows[arp], AppProto.ARP)
    return rows, off, etype


def _mpls(pk: Packets, rows: np.ndarray, off: np.ndarray, etype: np.ndarray, idx: np.ndarray) -> None:
    """Walk label stacks to the bottom, then guess IPv4/IPv6 from the version nibble."""
    top = True
    active = idx
    for _ in range(MAX_LABELS):
        short = ~pk.fits(rows[active], off[active], 4)
        if short.any():
            pk.fail(rows[active[short]], DecodeStatus.TRUNCATED)
            etype[active[short]] = -1
            active = active[~short]
        word = pk.u32(off[active])
        if top:
            pk.put("mpls_label", rows[active], word >> 12)
            top = False
        off[active] += 4
        bottom = (word >> 8) & 1 == 1
        done = active[bottom]
        nibble = pk.u8(off[done]) >> 4
        etype[done] = np.select([nibble == 4, nibble == 6], [ETH_IPV4, ETH_IPV6], -1)
        bad = done[etype[done] < 0]
        pk.fail(rows[bad], DecodeStatus.UNKNOWN_ENCAPSULATION)
        active = active[~bottom]
        if not len(active):
            return
    pk.fail(rows[active], DecodeStatus.TOO_MANY_LAYERS)
    etype[active] = -1


def linux_sll(pk: Packets, rows: np.ndarray, off: np.ndarray) -> Layer:
    ok = pk.fits(rows, off, 16)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = rows[ok], off[ok]
    return _after_ethertype(pk, rows, off + 16, pk.u16(off + 14).astype(np.int64))


def linux_sll2(pk: Packets, rows: np.ndarray, off: np.ndarray) -> Layer:
    ok = pk.fits(rows, off, 20)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = rows[ok], off[ok]
    return _after_ethertype(pk, rows, off + 20, pk.u16(off).astype(np.int64))


def loopback(pk: Packets, rows: np.ndarray, off: np.ndarray) -> Layer:
    """4-byte address family, host byte order (NULL) or network order (LOOP)."""
    ok = pk.fits(rows, off, 4)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = rows[ok], off[ok]
    be = pk.u32(off)
    le = be.byteswap()
    fam = np.where(be < 256, be, le)
    etype = np.select([fam == 2, one_of(fam, (10, 24, 28, 30))], [ETH_IPV4, ETH_IPV6], 0).astype(np.int64)
    pk.put("eth_type", rows, etype.astype(np.uint16))
    return rows, off + 4, etype


def raw_ip(pk: Packets, rows: np.ndarray, off: np.ndarray) -> Layer:
    ok = pk.fits(rows, off, 1)
    pk.fail(rows[~ok], DecodeStatus.TRUNCATED)
    rows, off = rows[ok], off[ok]
    nibble = pk.u8(off) >> 4
    etype = np.select([nibble == 4, nibble == 6], [ETH_IPV4, ETH_IPV6], 0).astype(np.int64)
    return rows, off, etype
