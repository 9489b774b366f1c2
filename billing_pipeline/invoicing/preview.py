"""Preview: the invoice an organisation would get for a month so far, from current usage.

Reads the same inputs as the drafts (usage.usage_period, the organisation's current plan, unused
credits, late usage of closed months) and prices them the same way, in a read-only transaction:
nothing is written, nothing is locked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.invoicing import periods
from billing_pipeline.invoicing.drafts import Draft, closed_at, load_inputs, needs_draft, price_organisation
from billing_pipeline.money import from_minor


@dataclass
class Preview:
    organisation_id: str
    period_start: date
    draft: Draft | None  # None when the month is closed
    would_be_drafted: bool = True
    month_closed_at: datetime | None = None
    finalized_number: str | None = None
    # a closed month: its invoices (void ones too) and their credit notes, as finance sees them now
    invoices: list[dict] = field(default_factory=list)
    credit_notes: list[dict] = field(default_factory=list)


_ISSUED = sa.text("""
    SELECT i.invoice_id, i.number, i.status, i.currency, i.total_minor,
           COALESCE(b.credited_minor, 0) AS credited_minor, COALESCE(b.refunded_minor, 0) AS refunded_minor,
           COALESCE(b.paid_minor, 0) AS paid_minor, COALESCE(b.balance_minor, 0) AS due_minor,
           v.reason AS void_reason, r.number AS replaced_by
    FROM billing.invoices i
    LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
    LEFT JOIN billing.invoice_voids v ON v.invoice_id = i.invoice_id
    LEFT JOIN billing.invoice_replacements x ON x.voided_invoice_id = i.invoice_id
    LEFT JOIN billing.invoices r ON r.invoice_id = x.replacement_invoice_id
    WHERE i.organisation_id = :o AND i.period_start = :p AND i.status <> 'draft'
    ORDER BY i.invoice_id
""")

_CREDIT_NOTES = sa.text("""
    SELECT c.number, i.number AS invoice_number, c.amount_minor, c.applied_minor, c.refund_minor,
           c.refund_method, c.currency, c.reason, c.issued_at, r.status AS refund_status
    FROM billing.credit_notes c
    JOIN billing.invoices i ON i.invoice_id = c.invoice_id
    LEFT JOIN billing.refunds r ON r.credit_note_id = c.credit_note_id
    WHERE i.organisation_id = :o AND i.period_start = :p
    ORDER BY c.credit_note_id
""")


def preview_invoice(engine: Engine, organisation_id: str, period_start: date) -> Preview:
    """Price one organisation's month as a draft would be; LookupError for an unknown organisation."""
    periods.check_period_start(period_start)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        inputs = load_inputs(conn, period_start, organisation_id)
        if not inputs.organisations:
            raise LookupError(f"no organisation {organisation_id!r} in the catalog")
        closed = closed_at(conn, period_start)
        if closed is not None:
            number = conn.execute(
                sa.text(
                    "SELECT number FROM billing.invoices WHERE organisation_id = :o AND period_start = :p"
                    " AND status = 'finalized'"
                ),
                {"o": organisation_id, "p": period_start},
            ).scalar_one_or_none()
            params = {"o": organisation_id, "p": period_start}
            return Preview(
                organisation_id, period_start, None, False, closed, number,
                [dict(r) for r in conn.execute(_ISSUED, params).mappings()],
                [dict(r) for r in conn.execute(_CREDIT_NOTES, params).mappings()],
            )
        org = inputs.organisations[0]
        usage = {metric: used for (_, metric), used in inputs.usage.items()}
        late = inputs.late.get(organisation_id, [])
        draft = price_organisation(org, usage, late, period_start)
        return Preview(organisation_id, period_start, draft, needs_draft(org, usage, late))


def _money(minor: int, currency: str) -> str:
    try:
        return f"{from_minor(minor, currency):,} {currency}"
    except ValueError:
        return f"{minor} (minor units, {currency})"


def render_text(preview: Preview) -> str:
    month = periods.label(preview.period_start)
    if preview.draft is None:
        invoice = f"invoice {preview.finalized_number}" if preview.finalized_number else "no invoice for it"
        out = [
            f"{month} was closed at {preview.month_closed_at:%Y-%m-%d %H:%M} UTC ({invoice}); usage of it that"
            f" arrives now is billed as late usage on {preview.organisation_id}'s next invoice."
        ]
        for i in preview.invoices:
            c = i["currency"]
            if i["status"] == "void":
                out.append(f"  {i['number']}: void ({i['void_reason']})"
                           + (f", replaced by {i['replaced_by']}" if i["replaced_by"] else ""))
            else:
                out.append(f"  {i['number']}: total {_money(i['total_minor'], c)}"
                           f", credited {_money(i['credited_minor'], c)}, refunded {_money(i['refunded_minor'], c)}, paid {_money(i['paid_minor'], c)}"
                           f", due {_money(i['due_minor'], c)}")
        for n in preview.credit_notes:
            c = n["currency"]
            refund = (
                f", {_money(n['refund_minor'], c)} refunded via {n['refund_method']} ({n['refund_status']})"
                if n["refund_minor"] else ""
            )
            out.append(f"  credit note {n['number']} on {n['invoice_number']}: {_money(n['amount_minor'], c)}"
                       f" ({n['reason']}){refund}")
        return "\n".join(out)
    d = preview.draft
    out = [
        f"Invoice preview for {d.organisation_id}, {month} so far (plan {d.plan_code} v{d.plan_version},"
        f" {d.currency}); nothing is written.",
        "",
    ]
    for line in d.lines:
        if line.kind == "commitment_true_up":
            what = "minimum commitment true-up"
        elif line.kind == "late_usage":
            what = f"late usage: {line.metric} of {periods.label(line.original_period_start)}"
        else:
            what = line.metric
        units = "" if line.units is None else f"{line.units.normalize():,f} units ({line.aggregation}, {line.model})"
        out.append(f"  {what:<40} {units:<44} {_money(line.amount_minor, d.currency):>20}")
    out.append("")
    for label, amount in (
        ("subtotal", d.subtotal_minor),
        ("discount", -d.discount_minor),
        (f"tax ({(d.tax_rate * 100).normalize():f} %)", d.tax_minor),
        ("prepaid credits applied", -d.credits_applied_minor),
        ("total", d.total_minor),
    ):
        out.append(f"  {label:<85} {_money(amount, d.currency):>20}")
    if not preview.would_be_drafted:
        out.append("\nNo usage of a charged metric and no minimum commitment: no invoice would be drafted.")
    for problem in d.problems:
        out.append(f"\nCannot be priced ({problem.get('metric') or 'invoice'}): {problem['reason']}")
    return "\n".join(out)


def render_json(preview: Preview) -> str:
    return json.dumps(asdict(preview), default=str, indent=2, sort_keys=True)
