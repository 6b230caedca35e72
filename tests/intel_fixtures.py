"""Intelligence feeds that match the bundled captures, in each of the three formats: a STIX bundle (a stealer's
C2 URL), a MISP event (a domain seen inside GTP-U, an SNI of the 5G core capture) and a plain JA3 list (a
malicious C2 client's fingerprint)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

C2_URL = "45.9.74.78/c2sock"  # zeek_http_ctu-62604-80.pcap
MALICIOUS_JA3 = "49ed2ef3f1321e5f044f1e71b0e6fdd5"  # suricata-verify_bug-5713-01_TLSv1-Extracted-MaliciousC2.pcap
FEEDS = ("cti-stix", "misp-lab", "ja3-blocklist")


def lab_feeds(directory: Path) -> Path:
    """Writes the feeds and their configuration into ``directory``; returns the configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "c2.json").write_text(json.dumps({"type": "bundle", "id": "bundle--lab", "objects": [
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--c2", "name": "stealer C2 panel",
         "pattern_type": "stix", "pattern": f"[url:value = 'http://{C2_URL}']", "valid_from": "2020-01-01T00:00:00Z",
         "confidence": 90}]}))
    (directory / "misp.json").write_text(json.dumps({"Event": {"info": "lab watch list", "threat_level_id": "2",
                                                               "Attribute": [
        {"type": "hostname", "value": "att.net", "to_ids": True},
        {"type": "domain", "value": "montimage.com", "to_ids": True}]}}))
    (directory / "ja3.txt").write_text(f"# malicious C2 clients\n{MALICIOUS_JA3}\n")
    config = directory / "intel.yml"
    config.write_text(yaml.safe_dump({"feeds": [
        {"name": "cti-stix", "path": "c2.json"}, {"name": "misp-lab", "path": "misp.json"},
        {"name": "ja3-blocklist", "path": "ja3.txt", "type": "ja3", "level": "critical"}]}))
    return config
