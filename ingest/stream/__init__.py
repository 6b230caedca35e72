"""Streaming through Kafka: sensors publish packet parts, detection workers in a consumer group
turn them into the same flows and alerts as ``liaowang replay`` (see docs/streaming.md)."""
