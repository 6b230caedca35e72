"""Stateful flow, packet and control-plane detectors; ``default_detectors()`` are those a replay runs
unless told otherwise."""

from __future__ import annotations

from detection.detectors.base import ControlDetector, Detector, FlowDetector, PacketDetector
from detection.detectors.beaconing import Beaconing
from detection.detectors.control_plane import (
    GtpuUeAddressMismatch,
    GtpuUnknownSessionTeid,
    NgapDeregistrationFlood,
    NgapMalformed,
    NgapRegistrationFlood,
    PfcpForeignSessionRequest,
    PfcpSessionWithoutUserPlane,
    PfcpUnknownSessionRequest,
    SbiNewPeer,
    SbiSubscriberEnumeration,
    control_plane_detectors,
)
from detection.detectors.gtp_peer import GtpuUnexpectedPeer
from detection.detectors.gtp_spoofing import TeidSpoofing
from detection.detectors.ics_master import IcsCommandFromNewMaster
from detection.detectors.new_destination import LargeTransferToNewHost
from detection.detectors.pfcp_sequence import PfcpSequenceSpoofing


def default_detectors() -> list[Detector]:
    return [Beaconing(), TeidSpoofing(), GtpuUnexpectedPeer(), LargeTransferToNewHost(), PfcpSequenceSpoofing(),
            IcsCommandFromNewMaster(), *control_plane_detectors()]


__all__ = ["Beaconing", "ControlDetector", "Detector", "FlowDetector", "GtpuUeAddressMismatch",
           "GtpuUnexpectedPeer", "GtpuUnknownSessionTeid", "IcsCommandFromNewMaster", "LargeTransferToNewHost",
           "NgapDeregistrationFlood", "NgapMalformed", "NgapRegistrationFlood", "PacketDetector",
           "PfcpForeignSessionRequest", "PfcpSequenceSpoofing", "PfcpSessionWithoutUserPlane",
           "PfcpUnknownSessionRequest", "SbiNewPeer",
           "SbiSubscriberEnumeration", "TeidSpoofing", "control_plane_detectors", "default_detectors"]
