"""billing.audit_log is append-only: the database refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing_pipeline.audit import AuditEntry, record


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE billing.audit_log SET to_state = 'tampered'",
        "DELETE FROM billing.audit_log",
        "TRUNCATE billing.audit_log",
    ],
)
def test_audit_log_refuses_changes(engine, statement):
    with engine.begin() as conn:
        record(
            conn,
            [
                AuditEntry(
                    "organisation",
                    "acme",
                    "trial_ended",
                    "cli:test",
                    "trialing",
                    "downgraded",
                    {"as_of": "2026-02-01T00:00:00+00:00"},
                )
            ],
        )
    with pytest.raises(sa.exc.DBAPIError, match="append-only") as refused, engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert refused.value.orig.sqlstate == "23001"  # restrict_violation
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entity_id, action, from_state, to_state, actor FROM billing.audit_log")
        ).all()
    assert [tuple(r) for r in rows] == [("acme", "trial_ended", "trialing", "downgraded", "cli:test")]
