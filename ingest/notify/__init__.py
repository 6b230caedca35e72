"""Notifications: alerts and incidents to webhooks, group robots, syslog (CEF) and email; see ``notifier.py``."""

from ingest.notify.config import NotifyConfig, NotifyConfigError, load_config, parse_config
from ingest.notify.notifier import NOTIFICATION_SCHEMA, Notifier
from ingest.notify.settings import NOTIFY_ROUTE_SCHEMA

__all__ = ["NOTIFICATION_SCHEMA", "NOTIFY_ROUTE_SCHEMA", "NotifyConfig", "NotifyConfigError", "Notifier", "load_config",
           "parse_config"]
