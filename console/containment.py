"""Containment exports (应急处置): what to block, from incidents or alerts, in the formats the enforcers take.

From a selection of incidents (and/or alerts) and the store's 5G context:

- **addresses to block**: each incident's actors (``host:`` entities) and each alert's source (the outer
  source for tunnel rules).  Incidents keyed on their target (floods from spoofed sources) name no
  actor: blocking their sources would block the spoofed addresses, not the attacker.  Addresses of the
  operator's own network functions (the NF inventory) are never blocked (a spoofed SMF address must not
  make the export cut N4); they are listed as withheld, with the reason;
- **5G core items**: the sessions involved, as ``seid`` (the UPF's and the SMF's), ``teid`` (uplink at the
  UPF, downlink at the gNB) and ``subscriber`` pseudonyms, for the operator to release or watch.

Formats (``FORMATS``): ``nftables`` (an ``nft -f`` script: a table of its own with address sets, dropping
in input and forward), ``iptables`` (a shell script for iptables/ip6tables with a chain of its own, safe to
re-run), ``suricata`` (drop rules, ``sid`` from ``SID_BASE``), ``stix`` (a STIX 2.1 bundle of indicators)
and ``core`` (CSV: kind, value, node, incident, reason; documented in docs/response.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

FORMATS = {"nftables": ("text/plain", "nft"), "iptables": ("text/x-shellscript", "sh"),
           "suricata": ("text/plain", "rules"), "stix": ("application/json", "json"), "core": ("text/csv", "csv")}
SID_BASE = 9_100_000
NAMESPACE = uuid.UUID("6b1f3c9e-2d4a-4e8b-9f7a-5c3d1e2b4a60")  # STIX ids derived from what they describe


@dataclass
class Block:
    address: str
    reasons: list[str] = field(default_factory=list)  # incident/alert ids
    titles: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What an export blocks and lists; the formats render it."""

    blocks: dict[str, Block] = field(default_factory=dict)
    withheld: dict[str, str] = field(default_factory=dict)  # address -> why it is not blocked
    core: list[dict[str, str]] = field(default_factory=list)  # kind, value, node, incident, reason
    subjects: list[str] = field(default_factory=list)  # the incidents/alerts it was made from

    def block(self, address: str | None, subject: str, title: str, protected: dict[str, str]) -> None:
        if not address:
            return
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
            self.withheld[address] = "not a host address"
            return
        if address in protected:
            self.withheld[address] = f"the operator's own network function ({protected[address]})"
            return
        b = self.blocks.setdefault(address, Block(address))
        if subject not in b.reasons:
            b.reasons.append(subject)
            b.titles.append(title)


def plan(incidents: list[dict[str, Any]], alerts: list[dict[str, Any]],
         sessions: list[tuple[dict[str, Any], str, str]], nf_roles: dict[str, str]) -> Plan:
    """``sessions``: (session row, the incident or alert that involves it, why); ``nf_roles``: address -> NF
    role(s) of the inventory (never blocked)."""
    p = Plan()
    for inc in incidents:
        p.subjects.append(inc["incident_id"])
        for entity in inc.get("entities") or []:
            kind, _, value = entity.partition(":")
            if kind == "host":
                p.block(value, inc["incident_id"], inc["title"], nf_roles)
    for a in alerts:
        p.subjects.append(a["alert_id"])
        p.block(a.get("tunnel_src_ip") or a.get("src_ip"), a["alert_id"], a["signature"], nf_roles)
    seen: set[tuple[str, str, str]] = set()
    for s, subject, why in sessions:
        items = [("seid", s.get("up_seid"), s.get("upf_ip")), ("seid", s.get("cp_seid"), s.get("smf_ip")),
                 ("teid", s.get("ul_teid"), s.get("upf_ip")), ("teid", s.get("dl_teid"), s.get("gnb_ip"))]
        rows = [(kind, f"0x{v:x}", node or "") for kind, v, node in items if v is not None]
        if s.get("subscriber"):
            rows.append(("subscriber", s["subscriber"], s.get("amf_ip") or ""))
        for kind, value, node in rows:
            if (kind, value, node) not in seen:
                seen.add((kind, value, node))
                p.core.append({"kind": kind, "value": value, "node": node, "incident": subject, "reason": why})
    return p


def _header(p: Plan, who: str, when: dt.datetime, comment: str = "#") -> list[str]:
    lines = [f"{comment} Liaowang containment export, {when.strftime('%Y-%m-%dT%H:%M:%SZ')}, by {who}",
             f"{comment} from: {', '.join(p.subjects)}"]
    for address, why in sorted(p.withheld.items()):
        lines.append(f"{comment} not blocked: {address}: {why}")
    if not p.blocks:
        lines.append(f"{comment} nothing to block: no actor addresses in the selection")
    return lines


def _address_order(address: str) -> tuple[int, int]:
    """IPv4 before IPv6, each in numeric order (ipaddress cannot compare across families)."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _split(p: Plan) -> tuple[list[str], list[str]]:
    v4 = sorted((a for a in p.blocks if ipaddress.ip_address(a).version == 4), key=ipaddress.ip_address)
    v6 = sorted((a for a in p.blocks if ipaddress.ip_address(a).version == 6), key=ipaddress.ip_address)
    return v4, v6


def nftables(p: Plan, who: str, when: dt.datetime) -> str:
    v4, v6 = _split(p)
    lines = ["#!/usr/sbin/nft -f", *_header(p, who, when),
             "table inet liaowang_containment", "delete table inet liaowang_containment",  # re-runs replace it
             "table inet liaowang_containment {"]
    for name, kind, items in (("blocked_v4", "ipv4_addr", v4), ("blocked_v6", "ipv6_addr", v6)):
        elements = f" elements = {{ {', '.join(items)} }};" if items else ""
        lines.append(f"  set {name} {{ type {kind};{elements} }}")
    for chain, hook in (("input", "input"), ("forward", "forward")):
        lines += [f"  chain {chain} {{", f"    type filter hook {hook} priority -10; policy accept;",
                  "    ip saddr @blocked_v4 drop", "    ip6 saddr @blocked_v6 drop"]
        if chain == "forward":
            lines += ["    ip daddr @blocked_v4 drop", "    ip6 daddr @blocked_v6 drop"]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def iptables(p: Plan, who: str, when: dt.datetime) -> str:
    v4, v6 = _split(p)
    lines = ["#!/bin/sh", *_header(p, who, when), "set -e"]
    for tool, items in (("iptables", v4), ("ip6tables", v6)):
        lines += [f"{tool} -N LIAOWANG-CONTAIN 2>/dev/null || {tool} -F LIAOWANG-CONTAIN"]
        for hook in ("INPUT", "FORWARD"):
            lines.append(f"{tool} -C {hook} -j LIAOWANG-CONTAIN 2>/dev/null || {tool} -I {hook} -j LIAOWANG-CONTAIN")
        for a in items:
            lines += [f"{tool} -A LIAOWANG-CONTAIN -s {a} -j DROP", f"{tool} -A LIAOWANG-CONTAIN -d {a} -j DROP"]
    return "\n".join(lines) + "\n"


def suricata(p: Plan, who: str, when: dt.datetime) -> str:
    lines = _header(p, who, when)
    for i, b in enumerate(sorted(p.blocks.values(), key=lambda b: _address_order(b.address))):
        msg = f"Liaowang containment: {b.titles[0]}".replace("\\", "\\\\").replace('"', '\\"').replace(";", "\\;")
        lines.append(f'drop ip {b.address} any -> any any (msg:"{msg}"; sid:{SID_BASE + i}; rev:1; '
                     f'metadata:liaowang_subject {b.reasons[0]};)')
    return "\n".join(lines) + "\n"


def _stix_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def stix(p: Plan, who: str, when: dt.datetime) -> str:
    identity = f"identity--{uuid.uuid5(NAMESPACE, 'liaowang')}"
    created = _stix_time(when)
    objects: list[dict[str, Any]] = [{"type": "identity", "spec_version": "2.1", "id": identity, "created": created,
                                      "modified": created, "name": "Liaowang", "identity_class": "system"}]
    for b in sorted(p.blocks.values(), key=lambda b: _address_order(b.address)):
        kind = "ipv4-addr" if ipaddress.ip_address(b.address).version == 4 else "ipv6-addr"
        objects.append({
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid5(NAMESPACE, b.address)}",
            "created_by_ref": identity, "created": created, "modified": created, "name": f"{b.address}: {b.titles[0]}",
            "description": "; ".join(f"{r}: {t}" for r, t in zip(b.reasons, b.titles)),
            "indicator_types": ["malicious-activity"], "pattern": f"[{kind}:value = '{b.address}']",
            "pattern_type": "stix", "valid_from": created, "labels": ["liaowang-containment"]})
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid5(NAMESPACE, '|'.join(p.subjects) + created)}",
              "objects": objects}
    return json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"


def core(p: Plan, who: str, when: dt.datetime) -> str:
    out = io.StringIO()
    out.write("\n".join(_header(p, who, when)) + "\n")
    writer = csv.DictWriter(out, ["kind", "value", "node", "incident", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(p.core)
    return out.getvalue()


RENDER = {"nftables": nftables, "iptables": iptables, "suricata": suricata, "stix": stix, "core": core}


def render(p: Plan, fmt: str, who: str, when: dt.datetime | None = None) -> str:
    return RENDER[fmt](p, who, when or dt.datetime.now(tz=dt.UTC))


__all__ = ["FORMATS", "Plan", "plan", "render"]
