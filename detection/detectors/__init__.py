"""Stateful flow detectors; ``default_detectors()`` are those a replay runs unless told otherwise."""

from __future__ import annotations

from detection.detectors.base import FlowDetector
from detection.detectors.beaconing import Beaconing
from detection.detectors.gtp_spoofing import TeidSpoofing
from detection.detectors.new_destination import LargeTransferToNewHost


def default_detectors() -> list[FlowDetector]:
    return [Beaconing(), TeidSpoofing(), LargeTransferToNewHost()]


__all__ = ["Beaconing", "FlowDetector", "LargeTransferToNewHost", "TeidSpoofing", "default_detectors"]
