"""NGAP (3GPP TS 38.413) and the NAS-5GS it carries (TS 24.501), the N2 interface gNB <-> AMF.

NGAP is ASN.1 aligned PER: field positions depend on every optional element
before them, so it is decoded with a real ASN.1 decoder, not by offsets.  We
use Wireshark's (tshark), driven once per packet batch: the batch's NGAP
payloads are written as "exported PDUs" (LINKTYPE_WIRESHARK_UPPER_PDU, tagged
with the ngap dissector) and tshark prints the fields we need.  Why tshark
rather than an ASN.1 library: its NGAP/NAS dissectors follow every release of
both specs and decode NAS inside NGAP in one pass, and at control-plane volumes
its ~0.3 s start-up per batch is affordable (``bench/`` reports messages/s);
pycrate, the one Python alternative with the 3GPP ASN.1, is far slower per
message.

Only plain NAS can be read: after the NAS security mode command most NAS
messages are ciphered (security header type 2 or 4), and for those only
``nas_ciphered`` is set.  SUPIs are recovered from null-scheme SUCIs only.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile

import pyarrow as pa

from sensors.capture.pcap import global_header
from sensors.protocols.messages import select, to_table
from sensors.schema import AppProto

NGAP_PPID = 60  # SCTP payload protocol identifier (RFC 9260 registry)

PROCEDURE_NAMES = {
    0: "amf_configuration_update", 1: "amf_status_indication", 2: "cell_traffic_trace", 3: "deactivate_trace",
    4: "downlink_nas_transport", 5: "downlink_non_ue_associated_nrppa_transport", 6: "downlink_ran_configuration_transfer",
    7: "downlink_ran_status_transfer", 8: "downlink_ue_associated_nrppa_transport", 9: "error_indication",
    10: "handover_cancel", 11: "handover_notification", 12: "handover_preparation", 13: "handover_resource_allocation",
    14: "initial_context_setup", 15: "initial_ue_message", 16: "location_reporting_control",
    17: "location_reporting_failure_indication", 18: "location_report", 19: "nas_non_delivery_indication",
    20: "ng_reset", 21: "ng_setup", 22: "overload_start", 23: "overload_stop", 24: "paging",
    25: "path_switch_request", 26: "pdu_session_resource_modify", 27: "pdu_session_resource_modify_indication",
    28: "pdu_session_resource_release", 29: "pdu_session_resource_setup", 30: "pdu_session_resource_notify",
    31: "private_message", 32: "pws_cancel", 33: "pws_failure_indication", 34: "pws_restart_indication",
    35: "ran_configuration_update", 36: "reroute_nas_request", 37: "rrc_inactive_transition_report",
    38: "trace_failure_indication", 39: "trace_start", 40: "ue_context_modification", 41: "ue_context_release",
    42: "ue_context_release_request", 43: "ue_radio_capability_check", 44: "ue_radio_capability_info_indication",
    45: "ue_tnla_binding_release", 46: "uplink_nas_transport", 47: "uplink_non_ue_associated_nrppa_transport",
    48: "uplink_ran_configuration_transfer", 49: "uplink_ran_status_transfer",
    50: "uplink_ue_associated_nrppa_transport", 51: "write_replace_warning",
}
#: tshark fields read, in output order
FIELDS = [
    "frame.number", "ngap.NGAP_PDU", "ngap.procedureCode", "ngap.RAN_UE_NGAP_ID", "ngap.AMF_UE_NGAP_ID",
    "nas_5gs.security_header_type", "nas_5gs.mm.message_type", "nas_5gs.sm.message_type",
    "nas_5gs.mm.suci.msin", "nas_5gs.mm.suci.scheme_id", "nas_5gs.mm.suci.supi_fmt", "e212.mcc", "e212.mnc",
    "nas_5gs.5g_tmsi", "ngap.fiveG_TMSI", "nas_5gs.pdu_session_id", "ngap.pDUSessionID",
    "nas_5gs.sm.pdu_addr_inf_ipv4", "nas_5gs.cmn.dnn", "ngap.sST", "ngap.sD", "ngap.TransportLayerAddressIPv4",
    "ngap.gTP_TEID", "nas_5gs.mm.5gmm_cause", "ngap.RANNodeName", "ngap.AMFName", "_ws.malformed",
]
LINKTYPE_WIRESHARK_UPPER_PDU = 252
EXP_PDU_TAG_PROTO_NAME, EXP_PDU_TAG_END = 12, 0
AGGREGATOR = "|"


class TsharkMissing(RuntimeError):
    pass


def tshark_path() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise TsharkMissing("tshark is not installed (scripts/setup.sh installs it): NGAP cannot be dissected")
    return path


def messages(packets: pa.RecordBatch | pa.Table) -> pa.Table:
    """``proto.ngap``: one row per NGAP message (every NGAP DATA chunk of each SCTP packet)."""
    msgs = select(packets, AppProto.NGAP)
    if not len(msgs):
        return to_table("ngap", [])
    each = msgs.every_payload((NGAP_PPID,))
    try:
        decoded = dissect_payloads([p for _, p in each])
    except (TsharkMissing, subprocess.SubprocessError, OSError) as e:
        decoded = [{"error": str(e)} for _ in each]
    return to_table("ngap", [dict(msgs.common(i), **d) for (i, _), d in zip(each, decoded)])


def dissect_payloads(payloads: list[bytes], dissector: bytes = b"ngap") -> list[dict[str, object]]:
    """One dict per payload: the fields of ``NGAP_FIELDS`` that tshark found."""
    fd, path = tempfile.mkstemp(suffix=".pcap", prefix="liaowang-ngap-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(global_header(LINKTYPE_WIRESHARK_UPPER_PDU))
            head = _tag(EXP_PDU_TAG_PROTO_NAME, dissector) + _tag(EXP_PDU_TAG_END, b"")
            for i, p in enumerate(payloads):
                rec = head + p
                f.write(struct.pack("<IIII", i, 0, len(rec), len(rec)) + rec)
        cmd = [tshark_path(), "-n", "-r", path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
               "-E", f"aggregator={AGGREGATOR}", "-E", "quote=n"]
        for name in FIELDS:
            cmd += ["-e", name]
        done = subprocess.run(cmd, capture_output=True, check=True, timeout=600)
    finally:
        os.unlink(path)
    out: list[dict[str, object]] = [{"error": "not dissected"} for _ in payloads]
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        cols = line.split("\t")
        if len(cols) < len(FIELDS) or not cols[0].isdigit():
            continue
        values = {name: [v for v in col.split(AGGREGATOR) if v] for name, col in zip(FIELDS, cols)}
        index = int(cols[0]) - 1
        if 0 <= index < len(out):
            out[index] = _row(values)
    return out


def _tag(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _ints(values: list[str], base: int = 10) -> list[int]:
    out = []
    for v in values:
        try:
            out.append(int(v, 16) if v.startswith("0x") else int(v, base))
        except ValueError:
            continue
    return out


def _first_int(values: list[str]) -> int | None:
    ints = _ints(values)
    return ints[0] if ints else None


def _row(v: dict[str, list[str]]) -> dict[str, object]:
    first = {k: (vals[0] if vals else None) for k, vals in v.items()}
    pdu, proc = _ints(v["ngap.NGAP_PDU"]), _ints(v["ngap.procedureCode"])
    sec = _ints(v["nas_5gs.security_header_type"])
    mm, sm = _ints(v["nas_5gs.mm.message_type"]), _ints(v["nas_5gs.sm.message_type"])
    row: dict[str, object] = {
        "pdu_type": pdu[0] if pdu else None,
        "procedure_code": proc[0] if proc else None,
        "procedure_name": PROCEDURE_NAMES.get(proc[0], f"procedure_{proc[0]}") if proc else None,
        "ran_ue_ngap_id": _first_int(v["ngap.RAN_UE_NGAP_ID"]),
        "amf_ue_ngap_id": _first_int(v["ngap.AMF_UE_NGAP_ID"]),
        "nas_mm_types": mm, "nas_sm_types": sm,
        "nas_ciphered": any(h in (2, 4) for h in sec) and not mm and not sm,
        "pdu_session_ids": list(dict.fromkeys(_ints(v["ngap.pDUSessionID"]) + _ints(v["nas_5gs.pdu_session_id"]))),
        "ue_ip": first["nas_5gs.sm.pdu_addr_inf_ipv4"],
        "dnn": first["nas_5gs.cmn.dnn"],
        "mm_cause": _first_int(v["nas_5gs.mm.5gmm_cause"]),
        "ran_node_name": first["ngap.RANNodeName"],
        "amf_name": first["ngap.AMFName"],
        "malformed": bool(v["_ws.malformed"]),
        "snssais": _snssais(v["ngap.sST"], v["ngap.sD"]),
        "gtp_tunnels": [{"teid": int(t, 16), "ip": ip} for ip, t in
                        zip(v["ngap.TransportLayerAddressIPv4"], v["ngap.gTP_TEID"])],
    }
    scheme = _ints(v["nas_5gs.mm.suci.scheme_id"])
    if scheme:
        row["suci_scheme"] = scheme[0]
        msin, fmt = first["nas_5gs.mm.suci.msin"], _ints(v["nas_5gs.mm.suci.supi_fmt"])
        if scheme[0] == 0 and msin and (not fmt or fmt[0] == 0) and first["e212.mcc"] and first["e212.mnc"]:
            mnc = first["e212.mnc"]
            row["supi"] = f"imsi-{int(first['e212.mcc']):03d}{mnc}{msin}"
    tmsi = _ints(v["nas_5gs.5g_tmsi"]) or _ints(v["ngap.fiveG_TMSI"], 16)
    if tmsi:
        row["tmsi_5g"] = f"{tmsi[0]:08x}"
    return row


def _snssais(sst: list[str], sd: list[str]) -> list[str]:
    if len(sd) == len(sst):
        return list(dict.fromkeys(f"{int(a, 16)}-{b}" for a, b in zip(sst, sd)))
    return list(dict.fromkeys(str(int(a, 16)) for a in sst))
