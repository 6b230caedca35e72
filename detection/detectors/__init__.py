"""Stateful flow and packet detectors; ``default_detectors()`` are those a replay runs unless told otherwise."""

from __future__ import annotations

from detection.detectors.base import Detector, FlowDetector, PacketDetector
from detection.detectors.beaconing import Beaconing
from detection.detectors.gtp_peer import GtpuUnexpectedPeer
from detection.detectors.gtp_spoofing import TeidSpoofing
from detection.detectors.ics_master import IcsCommandFromNewMaster
from detection.detectors.new_destination import LargeTransferToNewHost
from detection.detectors.pfcp_sequence import PfcpSequenceSpoofing


def default_detectors() -> list[Detector]:
    return [Beaconing(), TeidSpoofing(), GtpuUnexpectedPeer(), LargeTransferToNewHost(), PfcpSequenceSpoofing(),
            IcsCommandFromNewMaster()]


__all__ = ["Beaconing", "Detector", "FlowDetector", "GtpuUnexpectedPeer", "IcsCommandFromNewMaster", "LargeTransferToNewHost",
           "PacketDetector", "PfcpSequenceSpoofing", "TeidSpoofing", "default_detectors"]
