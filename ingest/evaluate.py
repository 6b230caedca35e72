"""``liaowang evaluate``: replay labelled captures and measure detection per attack class.

Capture-level truth: a labelled capture must raise its classes (recall), an alert
of a class on a capture not labelled with it is a false alert (precision), and
every alert on a benign capture counts against the false-alert rate per hour.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ingest.replay import replay

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "pcaps" / "labels.yml"
#: attack class -> the alert signatures (title prefixes) that report it
CLASSES: dict[str, tuple[str, ...]] = {
    "port_scan": ("TCP vertical port scan", "Horizontal sweep"),
    "syn_flood": ("TCP SYN flood",),
    "udp_flood": ("UDP flood",),
    "icmp_flood": ("ICMP echo flood",),
    "brute_force": ("SSH brute force", "FTP, Telnet or RDP brute force"),
    "dns_tunnel": ("DNS tunnelling",),
    "icmp_tunnel": ("ICMP tunnel",),
    "c2_beaconing": ("C2 beaconing",),
    "large_outbound": ("Large outbound transfer",),
    "cleartext_credentials": ("Credentials sent in cleartext", "Telnet session"),
    "obsolete_tls": ("Obsolete TLS",),
    "smbv1": ("SMBv1",),
    "vulnerable_banner": ("Outdated OpenSSH", "Web server version"),
    "gtp_in_gtp": ("GTP-in-GTP",),
    "teid_spoofing": ("GTP-U TEID spoofing",),
    "pfcp_storm": ("PFCP heartbeat storm",),
    "gtpc_flood": ("GTPv2-C Create Session",),
    "personal_data": ("Personal data in cleartext",),
    "ics_control_command": ("PLC stop, restart or program download",),
    "ics_new_master": ("Industrial write or control command from a host",),
    "pfcp_spoofed_request": ("PFCP request out of its node's sequence",),
    "pfcp_establishment_flood": ("PFCP session establishment flood",),
    "gtpu_unknown_teid": ("GTP-U Error Indications",),
    "gtpu_unexpected_peer": ("GTP-U from an unexpected peer",),
    "pfcp_foreign_session": ("PFCP session modification/deletion from a node that did not create",),
    "pfcp_unknown_session": ("PFCP session modification/deletion for a session that does not exist",),
    "gtpu_no_session": ("GTP-U to a TEID that no PFCP session established",),
    "gtpu_ue_spoofing": ("GTP-U uplink from an address not bound to its TEID",),
    "registration_flood": ("Registration request flood",),
    "deregistration_flood": ("UE deregistration flood",),
    "malformed_nas": ("Malformed NGAP/NAS",),
    "sbi_enumeration": ("SBI subscriber enumeration",),
    "sbi_new_peer": ("SBI call between network functions",),
    "anomaly": ("Anomalous flow",),
}


#: passive exposure findings and operations notices: true statements about a network (an old
#: server, a cleartext login, subscriber ids in clear, a PLC stopped by its engineers), reported
#: apart from attack alerts on benign captures rather than counted as false alarms
EXPOSURE = {"cleartext_credentials", "obsolete_tls", "smbv1", "vulnerable_banner", "personal_data",
            "ics_control_command"}


def alert_class(signature: str) -> str:
    return next((c for c, prefixes in CLASSES.items() if signature.startswith(prefixes)), "other")


@dataclass
class Evaluation:
    captures: int = 0
    expected: Counter[str] = field(default_factory=Counter)  # captures labelled with the class
    detected: Counter[str] = field(default_factory=Counter)  # of those, captures that raised it
    true_alerts: Counter[str] = field(default_factory=Counter)
    false_alerts: Counter[str] = field(default_factory=Counter)  # on captures not labelled with it
    benign_captures: int = 0
    benign_hours: float = 0.0
    benign_alerts: Counter[str] = field(default_factory=Counter)
    missed: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| attack class | captures | detected | recall | alerts | false alerts | precision |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for c in sorted(set(self.expected) | set(self.false_alerts) | set(self.true_alerts)):
            n, d = self.expected[c], self.detected[c]
            t, f = self.true_alerts[c], self.false_alerts[c]
            recall = f"{d / n:.0%}" if n else "-"
            precision = f"{t / (t + f):.0%}" if t + f else "-"
            lines.append(f"| {c} | {n} | {d} | {recall} | {t} | {f} | {precision} |")
        attacks = Counter({k: v for k, v in self.benign_alerts.items() if k not in EXPOSURE})
        exposure = Counter({k: v for k, v in self.benign_alerts.items() if k in EXPOSURE})
        total = sum(attacks.values())
        rate = total / self.benign_hours if self.benign_hours else 0.0
        lines += ["", f"Benign captures: {self.benign_captures}, {self.benign_hours:.2f} hours of traffic "
                      f"(time with an active flow), {total} attack alerts: **{rate:.2f} false alerts per hour**"
                  + (" (" + ", ".join(f"{k} {v}" for k, v in attacks.most_common()) + ")" if total else "")
                  + "; exposure findings: " + (", ".join(f"{k} {v}" for k, v in exposure.most_common())
                                               if exposure else "none") + "."]
        if self.missed:
            lines += ["", "Missed: " + ", ".join(self.missed)]
        if self.unexpected:
            lines += ["", "Alerts of other classes on attack captures: " + ", ".join(self.unexpected)]
        return "\n".join(lines)


def _alerts_and_hours(inputs: list[Path], tmp: Path) -> tuple[list[str], float]:
    out = tmp / "run"
    replay([str(p) for p in inputs], out, processes=1)
    signatures = pq.read_table(out / "alerts.parquet", columns=["signature"]).column("signature").to_pylist()
    return signatures, _traffic_hours(out / "flows.parquet")


def _traffic_hours(flows_path: Path) -> float:
    """Hours during which some flow was active (the union of flow spans, each at least 1 s): a capture's
    first-to-last span would count the gaps, and stray timestamps, as traffic."""
    flows = pq.read_table(flows_path, columns=["first_seen", "last_seen"])
    if not flows.num_rows:
        return 0.0
    order = np.argsort(flows.column("first_seen").cast(pa.int64()).to_numpy(), kind="stable")
    start = flows.column("first_seen").cast(pa.int64()).to_numpy()[order]
    end = np.maximum(flows.column("last_seen").cast(pa.int64()).to_numpy()[order], start + 1_000_000_000)
    reach = np.maximum.accumulate(end)
    gaps = np.maximum(start[1:] - reach[:-1], 0)
    return float((reach[-1] - start[0] - gaps.sum()) / 3.6e12)


def evaluate(shared: Path | None) -> Evaluation:
    from sensors.generate.attacks import generated_attacks
    from sensors.generate.mixed import generate

    labels = yaml.safe_load(LABELS.read_text())
    ev = Evaluation()
    with tempfile.TemporaryDirectory(prefix="liaowang-eval-") as tmp_name:
        tmp = Path(tmp_name)
        generated = generated_attacks(tmp / "gen")
        generate(tmp / "gen" / "mixed_10k.pcap", 10_000, seed=2, profile="short-flows")
        generated["mixed_10k"] = tmp / "gen" / "mixed_10k.pcap"

        def resolve(name: str) -> Path | None:
            kind, _, rest = name.partition("/")
            if kind == "generated":
                return generated[rest]
            if kind == "bundled" or kind not in ("shared", "generated"):
                return ROOT / "pcaps" / "shared" / (rest if kind == "bundled" else name)
            return shared / rest if shared is not None and (shared / rest).exists() else None

        for i, (name, classes) in enumerate(labels["attacks"].items()):
            path = resolve(name)
            if path is None:
                continue
            signatures, _ = _alerts_and_hours([path], tmp / f"a{i}")
            ev.captures += 1
            raised = Counter(alert_class(s) for s in signatures)
            for c in classes:
                ev.expected[c] += 1
                if raised[c]:
                    ev.detected[c] += 1
                else:
                    ev.missed.append(f"{c} on {name}")
            for c, n in raised.items():
                (ev.true_alerts if c in classes else ev.false_alerts)[c] += n
                if c not in classes:
                    ev.unexpected.append(f"{c} x{n} on {name}")
        benign = [resolve(b) for b in labels["benign_bundled"]]
        if shared is not None and (shared / "manifest.json").exists():
            manifest = json.loads((shared / "manifest.json").read_text())
            labelled = {name.partition("/")[2] for name in labels["attacks"] if name.startswith("shared/")}
            # bundled copies are named after their shared path: evaluated once, under their bundled label
            bundled = set(labels["benign_bundled"]) | {name.partition("/")[2] for name in labels["attacks"]
                                                       if name.startswith("bundled/")}
            benign += [shared / m["file"] for m in manifest
                       if "benign" in m["cat"].lower() and m["file"] not in labelled
                       and m["file"].replace("/", "_") not in bundled]
        for i, path in enumerate(p for p in benign if p is not None and p.exists()):
            signatures, hours = _alerts_and_hours([path], tmp / f"b{i}")
            ev.benign_captures += 1
            ev.benign_hours += hours
            ev.benign_alerts.update(alert_class(s) for s in signatures)
    return ev
