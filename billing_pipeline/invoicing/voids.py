"""Voiding a finalized, unpaid invoice (sql/0045_invoice_voids.sql), with an optional replacement.

In one transaction, under a lock on the invoice's row: the invoice must be finalized, with no money
allocated to it and no credit note (a paid invoice is corrected with a credit note instead). Its status
becomes `void` (its number stays used; nothing else on it changes), billing.invoice_voids records the
reason (before the status moves: the trigger insists), and the claims of the late events its lines
billed are released, so that usage is billable again on a later invoice. A Razorpay Payment Link that
collection sent for it is cancelled at Razorpay first (under the invoice's row lock, before anything is
written), so the customer cannot pay a void invoice: a link already paid, or a Razorpay that cannot be
reached, refuses the void and nothing changes.

With `replace`, a replacement invoice is issued at once: a new number of the same series, finalized, its
late lines claiming their events again. Without corrections it has the same lines. With `units`
({metric: corrected units}), it is priced again: the voided invoice's plan snapshot (its charges,
minimum commitment, discounts and tax rate), its usage lines' units with the corrections, its late lines
as they were, and the prepaid credits available now (the voided invoice's are released) - the same
pricing functions as the month's drafts. Both are audited, the corrections with the replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import razorpay
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.audit import AuditEntry, record
from billing_pipeline.invoicing import drafts, numbering, periods
from billing_pipeline.providers import retry


log = logging.getLogger(__name__)


class VoidError(ValueError):
    """An invoice that cannot be voided as asked; nothing was written."""


@dataclass(frozen=True)
class Voided:
    invoice_id: int
    number: str
    events_released: int
    replacement_number: str | None = None
    replacement_invoice_id: int | None = None
    payment_link_cancelled: str | None = None


_INVOICE = sa.text("""
    SELECT i.invoice_id, i.number, i.status, i.issuer, i.organisation_id, i.total_minor, i.currency,
           COALESCE(b.paid_minor, 0) AS paid_minor, COALESCE(b.payments, 0) AS payments,
           COALESCE(b.credited_minor, 0) AS credited_minor
    FROM billing.invoices i LEFT JOIN billing.invoice_balances b ON b.invoice_id = i.invoice_id
    WHERE i.number = :number
    FOR UPDATE OF i
""")

_RELEASE = sa.text("""
    DELETE FROM billing.invoice_billed_events b
    USING billing.invoice_lines l
    WHERE b.line_id = l.line_id AND l.invoice_id = :invoice_id
""")

_COPY_INVOICE = sa.text("""
    INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, issuer, plan_id,
        plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,
        credits_applied_minor, total_minor, discounts_applied, problems, build_id, created_by)
    SELECT organisation_id, period_start, period_end, currency, 'draft', issuer, plan_id, plan_code, plan_version,
           plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor, credits_applied_minor, total_minor,
           discounts_applied, problems, build_id, :actor
    FROM billing.invoices WHERE invoice_id = :invoice_id
    RETURNING invoice_id
""")

_COPY_LINES = sa.text("""
    WITH src AS (
        SELECT * FROM billing.invoice_lines WHERE invoice_id = :old ORDER BY line_id
    ), copied AS (
        INSERT INTO billing.invoice_lines (invoice_id, kind, metric, aggregation, units, model, amount_unrounded,
            amount_minor, original_period_start, charge)
        SELECT :new, kind, metric, aggregation, units, model, amount_unrounded, amount_minor,
               original_period_start, charge
        FROM src
        RETURNING line_id, kind, metric, original_period_start
    )
    INSERT INTO billing.invoice_late_events (line_id, event_id, occurred_at, ingested_at, quantity)
    SELECT c.line_id, e.event_id, e.occurred_at, e.ingested_at, e.quantity
    FROM billing.invoice_late_events e
    JOIN src s ON s.line_id = e.line_id
    JOIN copied c ON c.kind = s.kind AND c.metric IS NOT DISTINCT FROM s.metric
                 AND c.original_period_start IS NOT DISTINCT FROM s.original_period_start
""")


def void_invoice(
    engine: Engine,
    number: str,
    *,
    reason: str,
    actor: str,
    replace: bool = False,
    units: Mapping[str, Decimal] | None = None,
    razorpay_client: razorpay.Client | None = None,
) -> Voided:
    """Void finalized, unpaid invoice `number` (module docstring); raises VoidError."""
    if not reason or not reason.strip():
        raise VoidError("a void needs a reason")
    if units and not replace:
        raise VoidError("corrected units are for a replacement invoice: add --replace")
    with engine.begin() as conn:
        inv = conn.execute(_INVOICE, {"number": number}).mappings().one_or_none()
        if inv is None:
            raise VoidError(f"no invoice {number}")
        if inv["status"] != "finalized":
            raise VoidError(f"invoice {number} is {inv['status']}: only a finalized invoice can be voided")
        if inv["payments"] or inv["paid_minor"]:
            raise VoidError(
                f"invoice {number} has payments ({inv['paid_minor']} minor units): issue a credit "
                "note instead"
            )
        if inv["credited_minor"]:
            raise VoidError(f"invoice {number} has credit notes: credit the rest instead of voiding it")
        collecting = conn.execute(
            sa.text("SELECT status FROM billing.collection_attempts WHERE invoice_id = :i AND status = 'pending'"),
            {"i": inv["invoice_id"]},
        ).scalar_one_or_none()
        if collecting:
            raise VoidError(
                f"invoice {number} is being collected (a provider call whose result is not recorded yet): "
                "run payment_collection for its month first"
            )
        link_id = _cancel_open_link(conn, inv, razorpay_client)
        released = conn.execute(_RELEASE, {"invoice_id": inv["invoice_id"]}).rowcount
        conn.execute(  # recorded first: the immutability trigger lets a void through only then
            sa.text(
                "INSERT INTO billing.invoice_voids (invoice_id, organisation_id, number, reason, voided_by,"
                " events_released) VALUES (:i, :org, :n, :reason, :actor, :released)"
            ),
            {
                "i": inv["invoice_id"],
                "org": inv["organisation_id"],
                "n": number,
                "reason": reason.strip(),
                "actor": actor,
                "released": released,
            },
        )
        conn.execute(
            sa.text("UPDATE billing.invoices SET status = 'void' WHERE invoice_id = :i"),
            {"i": inv["invoice_id"]},
        )
        replacement_id = replacement_number = None
        if replace:
            replacement_total = inv["total_minor"]
            if units:
                replacement_id, replacement_total = _insert_repriced(conn, inv["invoice_id"], units, actor)
            else:
                replacement_id = conn.execute(
                    _COPY_INVOICE, {"invoice_id": inv["invoice_id"], "actor": actor}
                ).scalar_one()
                conn.execute(_COPY_LINES, {"old": inv["invoice_id"], "new": replacement_id})
            now = datetime.now(UTC)
            replacement_number = numbering.format_number(
                inv["issuer"], now.year, numbering.reserve(conn, inv["issuer"], now.year, 1)
            )
            conn.execute(
                sa.text(
                    "UPDATE billing.invoices SET status = 'finalized', number = :n, finalized_at = :now,"
                    " finalized_by = :actor WHERE invoice_id = :i"
                ),
                {"n": replacement_number, "now": now, "actor": actor, "i": replacement_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO billing.invoice_replacements (voided_invoice_id, replacement_invoice_id,"
                    " organisation_id, replaced_by) VALUES (:i, :r, :org, :actor)"
                ),
                {"i": inv["invoice_id"], "r": replacement_id, "org": inv["organisation_id"], "actor": actor},
            )
        detail = {
            "reason": reason.strip(),
            "total_minor": inv["total_minor"],
            "currency": inv["currency"],
            "events_released": released,
            "replacement": replacement_number,
            "payment_link_cancelled": link_id,
            **({"corrected_units": {m: str(u) for m, u in units.items()}} if replace and units else {}),
        }
        record(
            conn,
            [
                AuditEntry(
                    "invoice",
                    str(inv["invoice_id"]),
                    "voided",
                    actor=actor,
                    from_state="finalized",
                    to_state="void",
                    detail={"number": number, **detail},
                ),
                *(
                    [
                        AuditEntry(
                            "invoice",
                            str(replacement_id),
                            "finalized",
                            actor=actor,
                            from_state="draft",
                            to_state="finalized",
                            detail={"number": replacement_number, "replaces": number,
                                    "total_minor": replacement_total},
                        )
                    ]
                    if replace
                    else []
                ),
            ],
        )
    if replacement_number is not None:
        # finalized now, outside the month's run: its document is rendered now too, once like every invoice's
        # (without a seller in the catalog, later by invoice_documents or `invoice pdf`)
        from billing_pipeline.documents.invoices import NoSeller, render_documents

        try:
            render_documents(engine, actor, number=replacement_number)
        except NoSeller as exc:
            log.warning("invoice %s: no document yet (%s)", replacement_number, exc)
    return Voided(inv["invoice_id"], number, released, replacement_number, replacement_id, link_id)


def _cancel_open_link(conn: sa.Connection, inv: Mapping, client: razorpay.Client | None) -> str | None:
    """Cancel the invoice's open Payment Link at Razorpay, if collection sent one; its id (module docstring)."""
    link_id = conn.execute(
        sa.text(
            "SELECT provider_object_id FROM billing.collection_attempts"
            " WHERE invoice_id = :i AND method = 'payment_link' AND status = 'link_sent'"
        ),
        {"i": inv["invoice_id"]},
    ).scalar_one_or_none()
    if link_id is None:
        return None
    number = inv["number"]
    if client is None:
        raise VoidError(f"invoice {number} has a Razorpay payment link ({link_id}) to cancel first: "
                        "configure RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET")  # fmt: skip
    try:
        link = retry.call("razorpay", "fetch payment link", lambda: client.payment_link.fetch(link_id))
        if link["status"] in ("paid", "partially_paid"):
            raise VoidError(
                f"invoice {number}'s payment link {link_id} is {link['status']} at Razorpay: record the payment"
                " (its webhook, or the provider sync of the `payments` asset), then correct the invoice with a credit note"
            )
        if link["status"] == "created":
            retry.call("razorpay", "cancel payment link", lambda: client.payment_link.cancel(link_id))
    except retry.ProviderUnavailable as exc:
        raise VoidError(f"invoice {number} not voided: its payment link {link_id} could not be cancelled ({exc})")
    except razorpay.errors.BadRequestError as exc:
        raise VoidError(f"invoice {number} not voided: Razorpay refused to cancel its payment link {link_id}: {exc}")
    return link_id  # cancelled now, or already cancelled or expired


_VOIDED = sa.text("""
    SELECT v.organisation_id, v.period_start, v.currency, v.issuer, v.build_id,
           v.plan_snapshot::text AS plan_snapshot,
           CASE WHEN v.currency = o.currency THEN  -- prepaid credits are in the organisation's currency
               (SELECT greatest(o.prepaid_credits_minor - coalesce(sum(i.credits_applied_minor), 0), 0)
                FROM billing.invoices i
                WHERE i.organisation_id = o.organisation_id AND i.currency = o.currency AND i.status <> 'void')
           ELSE 0 END AS credits_available_minor
    FROM billing.invoices v JOIN billing.organisations o USING (organisation_id)
    WHERE v.invoice_id = :i
""")

_LINES = sa.text("""
    SELECT l.kind, l.metric, l.aggregation, l.units, l.model, l.amount_unrounded, l.original_period_start,
           l.charge::text AS charge,
           coalesce((SELECT jsonb_agg(jsonb_build_array(e.event_id, e.occurred_at, e.ingested_at,
                                                        e.quantity::text) ORDER BY e.event_id)
                     FROM billing.invoice_late_events e WHERE e.line_id = l.line_id), '[]')::text AS events
    FROM billing.invoice_lines l WHERE l.invoice_id = :i ORDER BY l.line_id
""")

# the event amounts of a percentage charge as the voided invoice priced them: the month's events ingested
# before the month closed (later ones were billed as late usage, on a later invoice)
_EVENT_AMOUNTS = sa.text("""
    SELECT coalesce(array_agg(quantity ORDER BY occurred_at, event_id), '{}') FROM billing.events
    WHERE organisation_id = :org AND metric = :metric AND occurred_at >= :period_start_ts
      AND occurred_at < :period_end_ts
      AND ingested_at <= coalesce((SELECT closed_at FROM billing.invoice_periods WHERE period_start = :period_start),
                                  'infinity')
""")


def _insert_repriced(
    conn: sa.Connection, voided_id: int, units: Mapping[str, Decimal], actor: str
) -> tuple[int, int]:
    """The replacement of `voided_id` priced again with corrected `units`, written as a draft; its id and
    total."""
    inv = conn.execute(_VOIDED, {"i": voided_id}).mappings().one()
    snapshot = drafts.parse_json(inv["plan_snapshot"]) or {}
    charges = {c["metric"]: drafts.Charge.from_json(c) for c in snapshot.get("charges") or ()}
    for metric, value in units.items():
        if metric not in charges:
            raise VoidError(f"the invoice's plan has no charge for {metric!r} (it has: {', '.join(charges) or 'none'})")
        if not value.is_finite() or value < 0:
            raise VoidError(f"corrected units of {metric} must be a number, not negative, got {value}")
        if charges[metric].model == "percentage":
            raise VoidError(f"{metric} is priced per event (percentage): correct its events, not its units")
    usage: dict[str, drafts.Usage] = {}
    carried: list[drafts.DraftLine] = []
    bounds = periods.bounds(inv["period_start"])
    for line in conn.execute(_LINES, {"i": voided_id}).mappings():
        if line["kind"] == "late_usage":
            events = tuple(drafts.LateEvent(e[0], e[1], e[2], Decimal(e[3])) for e in drafts.parse_json(line["events"]))
            carried.append(drafts.DraftLine(
                kind="late_usage", metric=line["metric"], aggregation=line["aggregation"], units=line["units"],
                model=line["model"], amount_unrounded=line["amount_unrounded"], amount_minor=0,
                original_period_start=line["original_period_start"], charge=drafts.parse_json(line["charge"]),
                late_events=events,
            ))  # fmt: skip
        elif line["kind"] == "usage":
            metric = line["metric"]
            amounts = ()
            if charges.get(metric) and charges[metric].model == "percentage":
                amounts = tuple(conn.execute(_EVENT_AMOUNTS, {**bounds, "org": inv["organisation_id"],
                                                              "metric": metric}).scalar_one())  # fmt: skip
            usage[metric] = drafts.Usage(Decimal(units.get(metric, line["units"])), amounts)
    for metric, value in units.items():
        usage.setdefault(metric, drafts.Usage(Decimal(value)))
    commitment = snapshot.get("minimum_commitment")
    org = drafts.OrganisationInput(
        organisation_id=inv["organisation_id"],
        currency=inv["currency"],
        tax_rate=Decimal(str(snapshot.get("tax_rate") or 0)),
        discounts=snapshot.get("discounts") or [],
        existed_in_period=True,
        credits_available_minor=int(inv["credits_available_minor"]),
        plan_id=snapshot["plan_id"],
        plan_code=snapshot["code"],
        plan_version=snapshot["version"],
        minimum_commitment=None if commitment is None else Decimal(str(commitment)),
        plan_definition=snapshot.get("definition") or {},
        charges=tuple(charges.values()),
    )
    draft = drafts.price_organisation(org, usage, (), inv["period_start"], carried)
    if draft.problems:
        raise VoidError("the corrected invoice cannot be priced: "
                        + "; ".join(p["reason"] for p in draft.problems))
    new_id = conn.execute(
        sa.text("""
        INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, issuer, plan_id,
            plan_code, plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor,
            credits_applied_minor, total_minor, discounts_applied, problems, build_id, created_by)
        VALUES (:org, :period_start, :period_end, :currency, 'draft', :issuer, :plan_id, :plan_code, :plan_version,
            CAST(:snapshot AS jsonb), :tax_rate, :subtotal, :discount, :tax, :credits, :total,
            CAST(:applied AS jsonb), '[]', :build_id, :actor)
        RETURNING invoice_id"""),
        {"org": inv["organisation_id"], "period_start": inv["period_start"],
         "period_end": periods.next_month(inv["period_start"]), "currency": inv["currency"], "issuer": inv["issuer"],
         "plan_id": draft.plan_id, "plan_code": draft.plan_code, "plan_version": draft.plan_version,
         "snapshot": drafts.dump_json(draft.plan_snapshot), "tax_rate": draft.tax_rate, "subtotal": draft.subtotal_minor,
         "discount": draft.discount_minor, "tax": draft.tax_minor, "credits": draft.credits_applied_minor,
         "total": draft.total_minor, "applied": drafts.dump_json(draft.discounts_applied), "build_id": inv["build_id"],
         "actor": actor},
    ).scalar_one()  # fmt: skip
    for line in draft.lines:
        line_id = conn.execute(
            sa.text("""
            INSERT INTO billing.invoice_lines (invoice_id, kind, metric, aggregation, units, model,
                amount_unrounded, amount_minor, original_period_start, charge)
            VALUES (:i, :kind, :metric, :aggregation, :units, :model, :unrounded, :minor, :original,
                CAST(:charge AS jsonb))
            RETURNING line_id"""),
            {"i": new_id, "kind": line.kind, "metric": line.metric, "aggregation": line.aggregation,
             "units": line.units, "model": line.model, "unrounded": line.amount_unrounded,
             "minor": line.amount_minor, "original": line.original_period_start, "charge": drafts.dump_json(line.charge)},
        ).scalar_one()  # fmt: skip
        if line.late_events:
            conn.execute(
                sa.text(
                    "INSERT INTO billing.invoice_late_events (line_id, event_id, occurred_at, ingested_at, quantity)"
                    " VALUES (:l, :e, :o, :g, :q)"
                ),
                [{"l": line_id, "e": e.event_id, "o": e.occurred_at, "g": e.ingested_at, "q": e.quantity}
                 for e in line.late_events],
            )  # fmt: skip
    return new_id, draft.total_minor
