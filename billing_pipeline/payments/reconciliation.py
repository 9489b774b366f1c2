"""Payment reconciliation: provider records against payments against invoices (sql/reconcile_payments.sql).

For a range of days it replaces its own rows (source `payment_reconciliation`) in recon.discrepancies
and recon.payment_reconciliation_totals with one set-based statement; the kinds and their rules are in
the SQL file's header. A day on which a provider has ledger rows but no sync covering it is refused:
every row would otherwise look missing at the provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from billing_pipeline import findings
from billing_pipeline.markdown import table as markdown_table
from billing_pipeline.money import MINOR_UNIT_EXPONENTS, from_minor, is_valid_currency
from billing_pipeline.payments import sql_text
from billing_pipeline.utc import utc_midnight

SOURCE = "payment_reconciliation"
_LOCK_KEY = 0x7265636F  # "reco": one payment reconciliation at a time


class ReconciliationError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReconciliationResult:
    start: date
    end: date  # exclusive
    findings: int
    totals: list[dict]  # outcome, provider, currency, records, provider_amount_minor, internal_amount_minor
    largest: list[dict]  # the findings with the most money at stake


# One index probe per day and provider (LATERAL ... LIMIT 1): as an EXISTS, with the transaction's
# work_mem and a range of days, the planner hashed every payment ever recorded by provider alone and
# filtered each bucket by time (over a year's ledger, minutes; measured by bench/bench_history.py).
_UNSYNCED = sa.text("""
    SELECT pr.provider, d::date AS day
    FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz) - interval '1 day',
                         interval '1 day') AS d
    CROSS JOIN (VALUES ('stripe'), ('razorpay')) AS pr(provider)
    CROSS JOIN LATERAL (SELECT 1 FROM billing.payments p WHERE p.provider = pr.provider
                        AND p.provider_created_at >= d AND p.provider_created_at < d + interval '1 day'
                        LIMIT 1) AS has_payments
    WHERE NOT EXISTS (SELECT 1 FROM billing.provider_syncs s WHERE s.provider = pr.provider
                      AND s.window_start <= d AND s.window_end >= d + interval '1 day')
    ORDER BY 1, 2
""")
_DELETE = (
    sa.text(
        "DELETE FROM recon.discrepancies WHERE source = :source AND recon_date >= :d0 AND recon_date < :d1"
    ),
    sa.text("DELETE FROM recon.payment_reconciliation_totals WHERE recon_date >= :d0 AND recon_date < :d1"),
)
_TOTALS = sa.text("""
    SELECT outcome, provider, currency, sum(records)::bigint AS records,
           sum(provider_amount_minor)::bigint AS provider_amount_minor,
           sum(internal_amount_minor)::bigint AS internal_amount_minor
    FROM recon.payment_reconciliation_totals WHERE recon_date >= :d0 AND recon_date < :d1
    GROUP BY 1, 2, 3 ORDER BY outcome <> 'matched', outcome, provider, currency
""")
# Money at stake in major units of each finding's own currency (not converted between currencies).
_LARGEST = sa.text("""
    SELECT recon_date, kind, provider, organisation_id, reference, internal_amount_minor,
           provider_amount_minor, currency, detail
    FROM recon.discrepancies
    WHERE source = :source AND recon_date >= :d0 AND recon_date < :d1
    ORDER BY (CASE WHEN kind = 'amount_mismatch'
                   THEN abs(COALESCE(provider_amount_minor, 0) - COALESCE(internal_amount_minor, 0))
                   WHEN kind = 'duplicate' THEN provider_amount_minor
                   ELSE COALESCE(provider_amount_minor, internal_amount_minor, 0) END)
             / power(10::numeric, CASE WHEN currency = ANY(CAST(:zero AS text[])) THEN 0
                              WHEN currency = ANY(CAST(:three AS text[])) THEN 3 ELSE 2 END) DESC,
             discrepancy_id
    LIMIT :limit
""")


def reconcile_payments(
    conn: sa.Connection, start: date, end: date, *, largest: int = 10
) -> ReconciliationResult:
    """Reconcile the days [start, end) in the caller's transaction; idempotent per day."""
    if end <= start:
        raise ValueError(f"empty range {start} .. {end}")
    # Day arithmetic in UTC whatever the server's zone; a busy day's join hashes in memory, not in batches.
    conn.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
    conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    window = {"start": utc_midnight(start), "end": utc_midnight(end)}
    unsynced = conn.execute(_UNSYNCED, window).all()
    if unsynced:
        listed = ", ".join(f"{p} {d}" for p, d in unsynced)
        raise ReconciliationError(
            f"no provider sync covers {listed}: materialize stripe_sync / razorpay_sync for those days first "
            "(their payments would all look missing at the provider)"
        )
    days = {"d0": start, "d1": end, "source": SOURCE}
    for statement in _DELETE:
        conn.execute(statement, days)
    found = conn.execute(sql_text("reconcile_payments"), {**window, "source": SOURCE}).one().findings
    findings.observe(conn, SOURCE, start, end)
    totals = [dict(r) for r in conn.execute(_TOTALS, days).mappings()]
    zero = [c for c, e in MINOR_UNIT_EXPONENTS.items() if e == 0]
    three = [c for c, e in MINOR_UNIT_EXPONENTS.items() if e == 3]
    top = [
        dict(r)
        for r in conn.execute(_LARGEST, {**days, "zero": zero, "three": three, "limit": largest}).mappings()
    ]
    return ReconciliationResult(start, end, found, totals, top)


def _major(minor: int | None, currency: str | None) -> str:
    if minor is None:
        return ""
    return str(from_minor(int(minor), currency)) if is_valid_currency(currency) else str(minor)


def markdown(result: ReconciliationResult) -> tuple[str, str]:
    """Two Markdown tables for the asset metadata: totals per outcome, and the largest findings."""
    totals = markdown_table(
        ["outcome", "provider", "currency", "records", "provider amount", "internal amount"],
        (
            (t["outcome"], t["provider"], t["currency"], t["records"],
             _major(t["provider_amount_minor"], t["currency"]), _major(t["internal_amount_minor"], t["currency"]))
            for t in result.totals
        ),
    )
    largest = markdown_table(
        ["day", "kind", "provider", "organisation", "reference", "internal", "provider", "currency", "detail"],
        (
            (f["recon_date"], f["kind"], f["provider"], f["organisation_id"], f["reference"],
             _major(f["internal_amount_minor"], f["currency"]), _major(f["provider_amount_minor"], f["currency"]),
             f["currency"], f["detail"])
            for f in result.largest
        ),
        empty="No findings.",
    )
    return totals, largest
