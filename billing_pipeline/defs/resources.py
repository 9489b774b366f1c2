"""Resources shared by every domain: the warehouse and the edge store."""

import sqlite3
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from billing_pipeline import edge_store
from billing_pipeline.settings import Settings, load_settings
from billing_pipeline.warehouse import get_engine


class WarehouseResource(dg.ConfigurableResource):
    """The PostgreSQL warehouse (embedded when BILLING_DATABASE_URL is unset).

    Connection settings (URL, pool size, overflow, timeout, pre-ping, recycle) come from the
    environment through `Settings`, so secrets never enter run config or the UI.
    """

    def settings(self) -> Settings:
        return load_settings()

    @property
    def engine(self) -> Engine:
        return get_engine(self.settings())


class EdgeStoreResource(dg.ConfigurableResource):
    """The SQLite edge store (BILLING_EDGE_PATH, default BILLING_HOME/edge.sqlite3)."""

    path: str | None = None  # override for tests; default from settings

    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else load_settings().edge_path

    @contextmanager
    def connect(self):
        conn: sqlite3.Connection = edge_store.connect(self.resolved_path())
        try:
            yield conn
        finally:
            conn.close()


RESOURCES = {"warehouse": WarehouseResource(), "edge": EdgeStoreResource()}


class AlertResource(dg.ConfigurableResource):
    """Posts alerts to BILLING_ALERT_WEBHOOK_URL (Slack-compatible JSON); logs them when unset."""

    def send(self, title: str, fields: dict | None = None) -> bool:
        from billing_pipeline.alerts import send_alert

        url = load_settings().alert_webhook_url
        return send_alert(url.get_secret_value() if url else None, title, fields)


RESOURCES["alerts"] = AlertResource()
