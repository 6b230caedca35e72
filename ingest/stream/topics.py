"""Kafka topics, client settings and the broker-facing helpers both sides share."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("liaowang.stream")

#: the largest message either side sends or accepts (a part of a 32 MiB chunk compresses far below)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Topics:
    """Topic names (prefix from ``--topic-prefix`` / ``LIAOWANG_TOPIC_PREFIX``) and partition counts."""

    prefix: str = "liaowang"
    packet_partitions: int = 4

    @property
    def packets(self) -> str:
        return f"{self.prefix}.packets"

    @property
    def flows(self) -> str:
        """Stage 2 -> stage 3 (one partition: detection sees every partition's part of a batch in order)."""
        return f"{self.prefix}.flows"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    def partitions(self) -> dict[str, int]:
        return {self.packets: self.packet_partitions, self.flows: 1, self.dead_letter: 1}


def default_prefix() -> str:
    return os.environ.get("LIAOWANG_TOPIC_PREFIX", "liaowang")


#: transport security from the environment (docs/streaming.md, "Securing the transport")
SECURITY_ENV = {"protocol": "LIAOWANG_KAFKA_SECURITY", "ca": "LIAOWANG_KAFKA_CA", "cert": "LIAOWANG_KAFKA_CERT",
                "key": "LIAOWANG_KAFKA_KEY", "mechanism": "LIAOWANG_KAFKA_SASL_MECHANISM",
                "user": "LIAOWANG_KAFKA_USER", "password": "LIAOWANG_KAFKA_PASSWORD"}
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


def client_settings(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap.split(","), "client_id": f"liaowang-{os.getpid()}",
            "request_timeout_ms": 30_000, "reconnect_backoff_max_ms": 2_000, **security_settings()}


def security_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """TLS (server CA, optional client certificate) and SASL settings from ``LIAOWANG_KAFKA_*``; ValueError
    names what is wrong."""
    env = dict(os.environ) if env is None else env
    value = {k: env.get(v, "") for k, v in SECURITY_ENV.items()}
    protocol = (value["protocol"] or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"{SECURITY_ENV['protocol']}={protocol}: one of {', '.join(PROTOCOLS)}")
    settings: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        for name, setting in (("ca", "ssl_cafile"), ("cert", "ssl_certfile"), ("key", "ssl_keyfile")):
            if value[name]:
                if not os.path.isfile(value[name]):
                    raise ValueError(f"{SECURITY_ENV[name]}={value[name]}: no such file")
                settings[setting] = value[name]
        settings["ssl_check_hostname"] = True
    if protocol.startswith("SASL"):
        mechanism = (value["mechanism"] or MECHANISMS[0]).upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"{SECURITY_ENV['mechanism']}={mechanism}: one of {', '.join(MECHANISMS)}")
        if not value["user"]:
            raise ValueError(f"{protocol} needs {SECURITY_ENV['user']} and {SECURITY_ENV['password']}")
        if mechanism == "PLAIN" and protocol == "SASL_PLAINTEXT":
            log.warning("SASL PLAIN without TLS sends the Kafka password in clear")
        settings.update(sasl_mechanism=mechanism, sasl_plain_username=value["user"],
                        sasl_plain_password=value["password"])
    return settings


def producer_settings(bootstrap: str) -> dict[str, Any]:
    # values are Arrow IPC with LZ4 already (ingest/stream/codec.py): no second compression;
    # no idempotence: an idempotent producer cannot send again after a broker lost its state
    return {**client_settings(bootstrap), "acks": "all", "linger_ms": 5, "batch_size": 1 << 20,
            "max_request_size": MAX_MESSAGE_BYTES,
            "enable_idempotence": False, "retries": 3, "max_block_ms": 3_000, "compression_type": None,
            # a batch the broker has not taken within this fails over to the sensor's spool
            "delivery_timeout_ms": 5_000, "request_timeout_ms": 4_000}


def consumer_settings(bootstrap: str, group: str) -> dict[str, Any]:
    # a short session: a dead worker's partitions move within seconds (and the test broker
    # makes a group join wait half the session timeout)
    return {**client_settings(bootstrap), "group_id": group, "enable_auto_commit": False,
            "auto_offset_reset": "earliest", "allow_auto_create_topics": False,
            "session_timeout_ms": 6_000, "heartbeat_interval_ms": 2_000, "max_poll_interval_ms": 300_000,
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES, "fetch_max_bytes": MAX_MESSAGE_BYTES,
            "receive_message_max_bytes": MAX_MESSAGE_BYTES + (1 << 20), "max_poll_records": 64}


def ensure_topics(bootstrap: str, topics: Topics) -> None:
    """Create the topics that do not exist (explicitly: a broker that auto-creates picks its own counts).

    A topic that exists with other partition counts is used as it is, with a warning."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_settings(bootstrap))
    try:
        existing = set(admin.list_topics())
        wanted = topics.partitions()
        new = [NewTopic(name, n, 1, topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
               for name, n in wanted.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        for meta in admin.describe_topics([n for n in wanted if n in existing]):
            name = meta.get("name") or meta.get("topic")
            count = len(meta.get("partitions") or [])
            if name in wanted and count and count != wanted[name]:
                log.warning("topic %s has %d partitions, not %d: using it as it is", name, count, wanted[name])
    finally:
        admin.close()
