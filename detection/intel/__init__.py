"""Threat intelligence: feeds of indicators (STIX 2.1, MISP, plain lists), matched against packets."""

from detection.intel.feeds import FEED_STATUS_SCHEMA, IntelConfigError, IntelFeeds
from detection.intel.indicators import INDICATOR_SCHEMA, TYPES
from detection.intel.matcher import IntelMatcher, intel_rules

__all__ = ["FEED_STATUS_SCHEMA", "INDICATOR_SCHEMA", "IntelConfigError", "IntelFeeds", "IntelMatcher", "TYPES",
           "intel_rules"]
