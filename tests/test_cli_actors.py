"""Who did what: every command that changes billing state records its actor (`--actor NAME` as
`cli:NAME`, else the OS user) and what it did in billing.audit_log, read back here for each command."""

from __future__ import annotations

import getpass
import re
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from billing_pipeline.cli import app

CATALOG = Path(__file__).parent / "data" / "catalog_small.yaml"
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _audit(engine, entity_type: str) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT entity_id, action, actor FROM billing.audit_log WHERE entity_type = :t ORDER BY audit_id"
        ), {"t": entity_type})]


def test_each_state_changing_command_records_its_actor_in_the_audit_log(engine):
    _invoke("catalog", "apply", str(CATALOG), "--actor", "alice")
    [(application, action, actor)] = _audit(engine, "catalog_application")
    assert (action, actor) == ("applied", "cli:alice")
    _invoke("catalog", "apply", str(CATALOG), "--actor", "alice")  # nothing changes: nothing to record
    assert len(_audit(engine, "catalog_application")) == 1

    _invoke("wallet", "top-up", "org_b", "500", "--reference", "pay_1", "--actor", "bob")
    _invoke("wallet", "adjust", "--reason", "goodwill", "--reference", "adj_1", "--actor", "carol", "--", "org_b", "-20")
    wallet_actors = {actor for _, _, actor in _audit(engine, "wallet")}
    assert {"cli:bob", "cli:carol"} <= wallet_actors, _audit(engine, "wallet")

    created = _invoke("keys", "create", "--org", "org_a", "--project", "prj_a1", "--actor", "dave")
    key_id = re.search(r"key id:\s+(\S+)", created).group(1)
    rotated = _invoke("keys", "rotate", key_id, "--grace-seconds", "0", "--actor", "erin")
    new_key = re.search(r"key id:\s+(\S+)", rotated).group(1)
    _invoke("keys", "revoke", new_key)  # no --actor: the OS user
    assert _audit(engine, "api_key") == [
        (key_id, "created", "cli:dave"),
        (key_id, "rotated", "cli:erin"),
        (new_key, "revoked", f"cli:{getpass.getuser()}"),
    ]

    with engine.begin() as conn:
        inbox_id = conn.execute(sa.text(
            "INSERT INTO billing.webhook_inbox (provider, event_id, event_type, payload, raw_body, dead_at)"
            " VALUES ('stripe', 'evt_1', 'charge.failed', '{}', '\\x7b7d', now()) RETURNING inbox_id"
        )).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO billing.webhook_dead_letters (inbox_id, provider, event_id, attempts, last_error)"
            " VALUES (:i, 'stripe', 'evt_1', 5, 'ValueError: bad')"
        ), {"i": inbox_id})
        notification = conn.execute(sa.text(
            "INSERT INTO billing.notification_outbox (dedupe_key, kind, organisation_id, subject, body,"
            " created_by, next_attempt_at, attempts, dead_at, last_error)"
            " VALUES ('k', 'trial_ended', 'org_a', 's', 'b', 'test', now(), 5, now(), 'ConnectError')"
            " RETURNING notification_id"
        )).scalar_one()
    _invoke("webhooks", "replay", "--actor", "frank")
    assert [actor for *_, actor in _audit(engine, "webhook_event")] == ["cli:frank"], _audit(engine, "webhook_event")
    _invoke("accounts", "retry-notifications", "--actor", "grace")
    assert _audit(engine, "notification") == [(str(notification), "requeued", "cli:grace")]
