"""Call reconciliation: Vapi's calls (billing.vapi_calls) against ours (billing.calls), per UTC day.

For a window of whole days, in one transaction (set-based, whatever the number of days):
  1. recover: each provider call we lack is inserted with reconciled = true;
  2. refresh: calls not charged yet take the provider's settled state;
  3. charge: every chargeable call of the window is charged once (calls.charging);
  4. findings: this asset's rows in recon.discrepancies for the window are replaced
     (missing_call, amount_mismatch, missing_at_provider);
  5. summary: one recon.call_reconciliation row per day, with the webhook reliability.
Running it again for the same window leaves the same rows (recovered calls stay reconciled and are
not charged again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa

from billing_pipeline import findings, markdown
from billing_pipeline.calls import sql_text
from billing_pipeline.calls.charging import ChargeSummary, charge_calls
from billing_pipeline.money import from_minor
from billing_pipeline.utc import utc_midnight

SOURCE = "call_reconciliation"
RELIABILITY_THRESHOLD = Decimal("0.95")


_PENDING = sa.text(
    "SELECT call_id FROM billing.calls"
    " WHERE charge_status = 'pending' AND created_at >= :start AND created_at < :end"
)
_DELETE_FINDINGS = sa.text(
    "DELETE FROM recon.discrepancies"
    " WHERE source = :source AND recon_date >= :start_day AND recon_date < :end_day"
)
_DELETE_SUMMARY = sa.text(
    "DELETE FROM recon.call_reconciliation WHERE recon_date >= :start_day AND recon_date < :end_day"
)
_WORST = sa.text(
    """
    SELECT recon_date, kind, organisation_id, reference, internal_amount_minor, provider_amount_minor, detail
    FROM recon.discrepancies
    WHERE source = :source AND recon_date >= :start_day AND recon_date < :end_day
    ORDER BY greatest(abs(COALESCE(internal_amount_minor, 0) - COALESCE(provider_amount_minor, 0)),
                      COALESCE(provider_amount_minor, 0)) DESC, recon_date, reference
    LIMIT :limit
    """
)


@dataclass(frozen=True)
class DaySummary:
    recon_date: date
    provider_calls: int
    webhook_calls: int
    webhook_reliability: Decimal | None  # None: no ended calls that day
    recovered_calls: int
    recovered_revenue_minor: int
    amount_mismatches: int
    missing_at_provider: int
    refused_calls: int
    unattributed_calls: int

    def reliable(self, threshold: Decimal = RELIABILITY_THRESHOLD) -> bool:
        """At least `threshold` of the day's calls arrived by webhook (a day without calls is)."""
        return self.provider_calls == 0 or Decimal(self.webhook_calls) / self.provider_calls >= threshold


@dataclass(frozen=True)
class ReconResult:
    days: list[DaySummary]
    charges: ChargeSummary
    worst: list[sa.Row]

    def total(self, name: str) -> int:
        return sum(getattr(d, name) for d in self.days)

    def unreliable_days(self, threshold: Decimal = RELIABILITY_THRESHOLD) -> list[DaySummary]:
        return [d for d in self.days if not d.reliable(threshold)]


def reconcile_days(
    conn: sa.Connection, start_day: date, end_day: date, *, actor: str, worst: int = 10
) -> ReconResult:
    """Reconcile the days [start_day, end_day) in the caller's transaction."""
    if end_day <= start_day:
        raise ValueError(f"empty window: {start_day} to {end_day}")
    start, end = utc_midnight(start_day), utc_midnight(end_day)
    window = {"start": start, "end": end}
    days = {"source": SOURCE, "start_day": start_day, "end_day": end_day}
    conn.execute(sql_text("recover_missing_calls"), window)
    conn.execute(sql_text("refresh_pending_calls"), window)
    charges = charge_calls(conn, conn.execute(_PENDING, window).scalars().all(), actor=actor)
    conn.execute(_DELETE_FINDINGS, days)
    conn.execute(sql_text("insert_findings"), window)
    findings.observe(conn, SOURCE, start_day, end_day, actor=actor)
    conn.execute(_DELETE_SUMMARY, days)
    summary = [
        DaySummary(**{f: getattr(row, f) for f in DaySummary.__dataclass_fields__})
        for row in conn.execute(sql_text("insert_summary"), {**window, **days})
    ]
    summary.sort(key=lambda d: d.recon_date)
    return ReconResult(summary, charges, conn.execute(_WORST, {**days, "limit": worst}).all())


def usd(minor: int) -> str:
    return f"{from_minor(minor, 'USD')} USD"


def findings_markdown(rows: list[sa.Row]) -> str:
    return markdown.table(
        ["day", "kind", "organisation", "call", "ours (cents)", "Vapi (cents)", "detail"],
        (
            (r.recon_date, r.kind, r.organisation_id or "-", r.reference, r.internal_amount_minor,
             r.provider_amount_minor, r.detail)
            for r in rows
        ),
        empty="No findings.",
    )


def days_markdown(days: list[DaySummary]) -> str:
    return markdown.table(
        ["day", "Vapi calls", "by webhook", "reliability", "recovered", "recovered revenue", "mismatches", "refused"],
        (
            (d.recon_date, d.provider_calls, d.webhook_calls,
             "-" if d.webhook_reliability is None else f"{d.webhook_reliability * 100:.1f}%",
             d.recovered_calls, usd(d.recovered_revenue_minor), d.amount_mismatches, d.refused_calls)
            for d in days
        ),
    )
