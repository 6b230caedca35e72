"""Stores: one interface (:class:`~ingest.store.api.Store`), two backends chosen by URI.

A path is the embedded DuckDB + Parquet store; ``http(s)://host:port`` is
Elasticsearch (credentials from ``LIAOWANG_ES_API_KEY`` or
``LIAOWANG_ES_USER``/``LIAOWANG_ES_PASSWORD``, CA from ``LIAOWANG_ES_CA``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ingest.store.api import Condition, Page, Query, Store, StoreError

DEFAULT_STORE = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "liaowang"


def store_uri(uri: str | Path | None = None) -> str:
    """``uri``, or the default: ``$LIAOWANG_STORE`` or the user's data directory."""
    return str(uri or os.environ.get("LIAOWANG_STORE") or DEFAULT_STORE)


def open_store(uri: str | Path | None = None) -> Store:
    """The store at ``uri`` (default: :func:`store_uri`)."""
    uri = store_uri(uri)
    if uri.startswith(("http://", "https://")):
        from ingest.store.elastic import ElasticStore

        return ElasticStore(uri)
    from ingest.store.duck import DuckStore

    return DuckStore(uri)


__all__ = ["Condition", "DEFAULT_STORE", "Page", "Query", "Store", "StoreError", "open_store", "store_uri"]
