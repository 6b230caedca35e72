"""Threat intelligence: feeds of indicators (STIX 2.1, MISP, plain lists), matched against packets.

The names below load with their module on first use: every detection engine imports the matcher (its rules
are always loaded), but only a replay or worker given feeds needs the feed readers (~5 ms of a start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detection.intel.feeds import FEED_STATUS_SCHEMA, IntelConfigError, IntelFeeds
    from detection.intel.indicators import INDICATOR_SCHEMA, TYPES
    from detection.intel.matcher import IntelMatcher, intel_rules

_HOME = {"FEED_STATUS_SCHEMA": "feeds", "IntelConfigError": "feeds", "IntelFeeds": "feeds",
         "INDICATOR_SCHEMA": "indicators", "TYPES": "indicators", "IntelMatcher": "matcher", "intel_rules": "matcher"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = ["FEED_STATUS_SCHEMA", "INDICATOR_SCHEMA", "IntelConfigError", "IntelFeeds", "IntelMatcher", "TYPES",
           "intel_rules"]
