"""Accounts (issue 8): the daily transitions over many organisations, against baselines in the same run.

Figures, for N organisations (default 20,000):
  - grace_opened_per_s: run_grace opening N grace periods (one per failed invoice payment), moving the
    organisations to grace, with their audit rows and notifications, in one transaction, against
    per_org_loop: the same work one organisation at a time (a SELECT, three INSERTs and an UPDATE, each
    organisation in its own transaction, as a cron script would), on a sample;
  - trials_ended_per_s: run_trials ending N trials against the same kind of per_org_loop;
  - notifications_sent_per_s: the outbox delivered through the log sender (chunks of 100, results
    recorded per chunk) against bare_update: one UPDATE marking every row sent, the floor of any delivery.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from common import Timer, bench_home, report  # noqa: E402

from billing_pipeline.accounts import outbox  # noqa: E402
from billing_pipeline.accounts.clock import FixedClock  # noqa: E402
from billing_pipeline.accounts.grace import run_grace  # noqa: E402
from billing_pipeline.accounts.senders import LogSender  # noqa: E402
from billing_pipeline.accounts.trials import run_trials  # noqa: E402
from billing_pipeline.payments.ledger import Seen, apply_observations  # noqa: E402
from billing_pipeline.payments.objects import stripe_observation  # noqa: E402
from billing_pipeline.warehouse import get_engine  # noqa: E402

FAILED_AT = datetime(2026, 3, 3, 10, tzinfo=UTC)
TRIAL_END = datetime(2026, 3, 1, tzinfo=UTC)


def seed(engine, n: int, prefix: str) -> None:
    """n paying organisations with a failed invoice payment each, and n trialing ones."""
    with engine.begin() as conn:
        plan = conn.execute(
            sa.text(
                "INSERT INTO billing.plans (code, version, name, currency, definition, content_hash)"
                " VALUES (:c, 1, :c, 'USD', '{}', 'h') RETURNING plan_id"
            ),
            {"c": f"plan_{prefix}"},
        ).scalar_one()
        conn.execute(
            sa.text("""
            INSERT INTO billing.organisations (organisation_id, name, plan_code, plan_id, currency, provider,
                                               provider_customer_id, trial_ends_at, status, catalog_hash)
            SELECT :p || kind || i, :p || kind || i, :code, :plan, 'USD', 'stripe', 'cus_' || :p || kind || i,
                   CASE WHEN kind = 't' THEN CAST(:trial AS timestamptz) END,
                   CASE WHEN kind = 't' THEN 'trialing' ELSE 'active' END, 'h'
            FROM generate_series(1, :n) i, (VALUES ('a'), ('t')) k(kind)
        """),
            {"p": prefix, "code": f"plan_{prefix}", "plan": plan, "n": n, "trial": TRIAL_END},
        )
        build = conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by,"
                " draft_count) VALUES (gen_random_uuid(), '2026-02-01', 'bench', :n)"
                " RETURNING build_id"
            ),
            {"n": n},
        ).scalar_one()
        invoices = conn.execute(
            sa.text("""
            INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, number,
                plan_id, plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor,
                tax_minor, credits_applied_minor, total_minor, build_id, created_by, finalized_at,
                finalized_by)
            SELECT o.organisation_id, '2026-02-01', '2026-03-01', 'USD', 'finalized',
                   'B-' || o.organisation_id,
                   o.plan_id, o.plan_code, 1, '{}', 0, 5000, 0, 0, 0, 5000, :b, 'bench', now(), 'bench'
            FROM billing.organisations o WHERE o.organisation_id LIKE :p || 'a%'
            RETURNING invoice_id, organisation_id
        """),
            {"b": build, "p": prefix},
        ).all()
        charges = [
            stripe_observation(
                {
                    "id": f"ch_{prefix}{i}",
                    "object": "charge",
                    "amount": 5000,
                    "amount_refunded": 0,
                    "captured": False,
                    "currency": "usd",
                    "status": "failed",
                    "created": int(FAILED_AT.timestamp()),
                    "customer": f"cus_{org}",
                    "metadata": {"invoice_id": str(invoice_id)},
                }
            )
            for i, (invoice_id, org) in enumerate(invoices)
        ]
        apply_observations(conn, [Seen(c) for c in charges], via="sync", actor="bench")


def per_org_loop(engine, prefix: str, sample: int) -> tuple[float, float]:
    """The naive cron job on `sample` organisations: (grace periods opened per s, trials ended per s)."""
    orgs = [f"{prefix}a{i}" for i in range(1, sample + 1)]
    with Timer() as t:
        for org in orgs:
            with engine.begin() as conn:
                row = conn.execute(
                    sa.text("""
                    SELECT i.invoice_id, p.payment_id, p.provider_created_at FROM billing.invoices i
                    JOIN billing.payments p ON p.invoice_ref = i.invoice_id::text AND p.status = 'failed'
                    WHERE i.organisation_id = :o AND i.status = 'finalized'"""),
                    {"o": org},
                ).first()
                gid = conn.execute(
                    sa.text("""
                    INSERT INTO billing.grace_periods (invoice_id, organisation_id, currency, balance_minor,
                        failed_payment_id, grace_days, started_at, ends_at, opened_by)
                    VALUES (:i, :o, 'USD', 5000, :p, 7, :s, :s + interval '7 days', 'loop') RETURNING grace_id
                """),
                    {"i": row.invoice_id, "o": org, "p": row.payment_id, "s": row.provider_created_at},
                ).scalar_one()
                conn.execute(
                    sa.text("UPDATE billing.organisations SET status = 'grace' WHERE organisation_id = :o"),
                    {"o": org},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO billing.audit_log (entity_type, entity_id, action, actor)"
                        " VALUES ('grace_period', :g, 'opened', 'loop')"
                    ),
                    {"g": str(gid)},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO billing.notification_outbox (dedupe_key, kind, organisation_id,"
                        " subject, body, created_by, next_attempt_at)"
                        " VALUES (:k, 'grace_started', :o, 's', 'b', 'loop', now())"
                    ),
                    {"k": f"loop:{gid}", "o": org},
                )
    grace_rate = sample / t.seconds
    orgs = [f"{prefix}t{i}" for i in range(1, sample + 1)]
    with Timer() as t:
        for org in orgs:
            with engine.begin() as conn:
                row = conn.execute(
                    sa.text(
                        "SELECT status, trial_ends_at FROM billing.organisations"
                        " WHERE organisation_id = :o FOR UPDATE"
                    ),
                    {"o": org},
                ).first()
                if row.status == "trialing" and row.trial_ends_at <= TRIAL_END:
                    conn.execute(
                        sa.text(
                            "UPDATE billing.organisations SET status = 'active' WHERE organisation_id = :o"
                        ),
                        {"o": org},
                    )
                    conn.execute(
                        sa.text(
                            "INSERT INTO billing.audit_log (entity_type, entity_id, action, actor)"
                            " VALUES ('organisation', :o, 'trial_ended', 'loop')"
                        ),
                        {"o": org},
                    )
    return grace_rate, sample / t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--organisations", type=int, default=20_000)
    parser.add_argument(
        "--sample", type=int, default=1_000, help="organisations run through the per-org loop"
    )
    args = parser.parse_args()
    logging.getLogger("billing_pipeline").setLevel(logging.WARNING)
    with bench_home() as settings:
        engine = get_engine(settings)
        seed(engine, args.sample, "loop")
        loop_grace, loop_trials = per_org_loop(engine, "loop", args.sample)
        with engine.begin() as conn:  # the loop's rows must not count in the set-based runs
            conn.execute(sa.text("UPDATE billing.notification_outbox SET sent_at = now(), sent_via = 'log'"))
            conn.execute(sa.text("UPDATE billing.grace_periods SET status = 'paid', paid_at = now()"))

        seed(engine, args.organisations, "set")
        n = args.organisations
        with Timer() as t:
            grace = run_grace(engine, as_of=FAILED_AT + timedelta(hours=1), actor="bench")
        assert len(grace.opened) == n, len(grace.opened)
        report("accounts", "grace_opened_per_s", n / t.seconds, "per_org_loop", loop_grace)
        with Timer() as t:
            trials = run_trials(engine, as_of=TRIAL_END, actor="bench")
        assert len(trials.ended) == n, len(trials.ended)
        report("accounts", "trials_ended_per_s", n / t.seconds, "per_org_loop", loop_trials)

        with engine.begin() as conn:
            queued = conn.execute(
                sa.text("SELECT count(*) FROM billing.notification_outbox WHERE sent_at IS NULL")
            ).scalar_one()
        with Timer() as t:
            sent = outbox.deliver_due(engine, LogSender(), FixedClock(datetime.now(UTC))).sent
        assert sent == queued, (sent, queued)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE billing.notification_outbox SET sent_at = NULL, sent_via = NULL"
                    " WHERE sent_via = 'log' AND created_by = 'bench'"
                )
            )
            with Timer() as bare:
                conn.execute(
                    sa.text(
                        "UPDATE billing.notification_outbox SET sent_at = now(), sent_via = 'log',"
                        " attempts = attempts + 1 WHERE sent_at IS NULL"
                    )
                )
        report("accounts", "notifications_sent_per_s", sent / t.seconds, "bare_update", queued / bare.seconds)
        print(
            json.dumps({"bench": "accounts", "organisations": n, "per_org_sample": args.sample}),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
