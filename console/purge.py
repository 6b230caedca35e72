"""``liaowang purge``: delete stored rows by a retention policy per table, with a dry run first.

A policy is YAML, one entry per table: ``flows: {days: 30, gb: 50}`` keeps
30 days (counted back from the table's newest row, so a replayed capture from
2019 is judged on its own timeline) and then drops the oldest days until the
table is under 50 GB; ``proto_*`` covers every protocol-message table.  The
run, dry or not, is written to the console's audit log.
"""

from __future__ import annotations

import argparse
import fnmatch
import getpass
import sys
from pathlib import Path
from typing import Any

import yaml

#: a sensible start for a SOC keeping a year of alerts (docs/retention.md)
DEFAULT_POLICY: dict[str, dict[str, float]] = {
    "flows": {"days": 90}, "proto_*": {"days": 30}, "sensor_stats": {"days": 90},
    "alerts": {"days": 365}, "sessions": {"days": 180}, "nf_inventory": {"days": 365},
}


class PolicyError(ValueError):
    pass


def add_parser(sub: Any) -> None:
    p = sub.add_parser("purge", help="delete stored rows older or larger than a retention policy (--dry-run first)")
    p.add_argument("--store", metavar="URI", help="DuckDB store directory or http(s)://elasticsearch:9200 "
                                                  "(default: $LIAOWANG_STORE or the user's data directory)")
    p.add_argument("--policy", metavar="FILE", help="YAML: TABLE: {days: N, gb: G} per table ('proto_*' allowed); "
                                                    "default: the built-in policy (liaowang purge --show-policy)")
    p.add_argument("--table", metavar="NAME", help="just this table, with --days and/or --gb")
    p.add_argument("--days", type=float, metavar="N", help="with --table: keep N days")
    p.add_argument("--gb", type=float, metavar="G", help="with --table: keep at most G GB")
    p.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    p.add_argument("--show-policy", action="store_true", help="print the policy in force and exit")
    p.set_defaults(func=run)


def load_policy(text: str, tables: list[str], origin: str) -> dict[str, dict[str, float]]:
    """The policy per store table from YAML; PolicyError says what is wrong where."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin}: not YAML ({exc})") from None
    return parse_policy(raw, tables, origin)


def parse_policy(raw: object, tables: list[str], origin: str) -> dict[str, dict[str, float]]:
    """``{pattern: {days, gb}}`` checked and expanded to store tables."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{origin}: a mapping of table names to {{days, gb}}")
    policy: dict[str, dict[str, float]] = {}
    for pattern, limits in raw.items():
        matched = fnmatch.filter(tables, str(pattern))
        if not matched:
            raise PolicyError(f"{origin}: {pattern}: no such table (tables: {', '.join(tables)})")
        if not isinstance(limits, dict) or not limits or set(limits) - {"days", "gb"}:
            raise PolicyError(f"{origin}: {pattern}: give days and/or gb")
        for key, value in limits.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise PolicyError(f"{origin}: {pattern}.{key}: a number >= 0")
        for table in matched:
            policy[table] = {k: float(v) for k, v in limits.items()}
    return policy


def run(args: argparse.Namespace) -> int:
    from console.app import state_dir
    from console.state import ConsoleState
    from ingest.store import StoreError, open_store, store_uri
    from ingest.store.api import TABLES

    tables = list(TABLES)
    try:
        if args.table:
            if args.policy or (args.days is None and args.gb is None):
                raise PolicyError("--table goes with --days and/or --gb (not with --policy)")
            limits = {k: v for k, v in (("days", args.days), ("gb", args.gb)) if v is not None}
            policy = parse_policy({args.table: limits}, tables, "--table")
        elif args.policy:
            path = Path(args.policy)
            try:
                text = path.read_text()
            except OSError as exc:
                raise PolicyError(f"{path}: {exc.strerror}") from None
            policy = load_policy(text, tables, str(path))
        else:
            policy = parse_policy(DEFAULT_POLICY, tables, "built-in policy")
        if args.show_policy:
            print(yaml.safe_dump(policy, sort_keys=False), end="")
            return 0
        uri = store_uri(args.store)
        with open_store(uri) as store:
            dropped = {name: store.retain(name, limits.get("days"),
                                          int(limits["gb"] * 1e9) if "gb" in limits else None, dry_run=args.dry_run)
                       for name, limits in policy.items()}
    except (PolicyError, StoreError, OSError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2
    verb = "would delete" if args.dry_run else "deleted"
    for name, rows in dropped.items():
        keep = ", ".join(f"{v:g} {k}" for k, v in policy[name].items())
        print(f"{name:<24} keep {keep:<20} {verb} {rows:,} rows")
    ConsoleState(state_dir(uri)).audit(f"cli:{getpass.getuser()}", "purge_dry_run" if args.dry_run else "purge",
                                       uri, {"policy": policy, "rows": dropped})
    return 0


__all__ = ["DEFAULT_POLICY", "PolicyError", "add_parser", "load_policy", "parse_policy", "run"]
