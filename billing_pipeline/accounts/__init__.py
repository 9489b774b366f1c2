"""Accounts: trials, grace periods, dunning and customer notifications. Plain modules, no Dagster
(the daily assets are in billing_pipeline/defs/accounts; the schedules in defs/operations).

- `clock`: the injectable clock; decisions are taken "as of" an instant, never the wall clock inside.
- `trials`: trials that ended are downgraded (or continue as paying with a payment method on file); a
  reminder is queued the day before.
- `grace`: an invoice whose payment failed opens a grace period (the plan's grace_period_days); the
  organisation keeps access during it (status grace), is restricted after it, and a payment ends it.
- `dunning`: failed invoice payments retried through the provider on a schedule, one idempotency key
  per attempt, recorded before and after the call so a crash in between never charges twice.
- `outbox`, `senders`: notifications queued in the transaction of the change they announce, sent once
  by SMTP, HTTP or a log line.
- `settings`: the environment variables of accounts and operations; `cli`: `billing-pipeline health`.

Every state change is written to billing.audit_log in its own transaction (billing_pipeline.audit).
Statements over sets live in accounts/sql/*.sql, with bound parameters only.
"""

from __future__ import annotations


import sqlalchemy as sa

from billing_pipeline import sql_files

LOCK_KEY = 0x61636374  # "acct": trials, grace periods and dunning claims never interleave


def sql_text(name: str) -> sa.TextClause:
    """The statement in accounts/sql/<name>.sql."""
    return sql_files.statement(__name__, name)


def fetch(conn: sa.Connection, name: str, params: dict | None = None) -> list[dict]:
    """Run accounts/sql/<name>.sql; its rows as dicts."""
    return [dict(r) for r in conn.execute(sql_text(name), params or {}).mappings()]


def lock(conn: sa.Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
