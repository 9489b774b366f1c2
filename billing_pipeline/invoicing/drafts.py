"""Invoice drafts for a month: one per organisation and currency, priced in memory, written in bulk.

`build_drafts(engine, period_start, actor)` runs in one transaction under the invoicing advisory lock:

1. load: three set-based queries whatever the number of organisations (`load_inputs`): organisations
   with plan version, charges, discounts and unused credits; the month's usage (usage.usage_period)
   with the raw event amounts for percentage charges; late usage of closed months. The build also
   records the month's raw event count and total quantity, which finalization recounts;
2. price: `price_month` calls `billing_pipeline.pricing` per organisation, in memory;
3. write: this month's drafts are deleted and the new ones COPYed in, with their lines and the late
   events the late lines bill, one audit row per draft created and per draft replaced.

Who gets a draft: an organisation with usage of a metric its plan charges, or with late usage to
bill, or whose plan has a minimum commitment (if it existed before the month ended). Every charge of
the plan gets a line, zero units included. A charge that cannot be priced gets no line and its reason
goes into the draft's `problems`, which the `drafts_priced` check turns into a blocking failure.

Late usage: events of a closed (finalized) month ingested after it closed, not billed by any line
yet. Per organisation, metric and closed month, the charge of that month's invoice snapshot prices
the month's units with those events (the metric's aggregation over the month's raw events; for
weighted_sum, the units billed plus what each event adds until the month's end), and the late line
bills the difference with what that month's invoices billed so far, never below zero. So a graduated
price continues from the tier already reached and a late event below the month's max adds nothing.
The line records the events it bills: an event is on one line only, ever (a unique key), so it is
never billed twice. The usage model is not read for closed months: it keeps what was invoiced.

A closed month is never drafted again: its later usage is billed as late usage on the next invoice.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline import audit
from billing_pipeline.invoicing import INVOICING_LOCK, LOCK_SQL, load_sql, periods
from billing_pipeline.money import from_minor, to_minor
from billing_pipeline.pricing import (
    TRUE_UP_KIND,
    Discount,
    InvoiceTotals,
    LineInput,
    charge_amount,
    price_invoice,
)

_ZERO = Decimal(0)


def parse_json(text: str | None):
    """JSON from the database, numbers as Decimal (never float)."""
    return None if text is None else json.loads(text, parse_float=Decimal)


def dump_json(value) -> str:
    return json.dumps(value, default=str, sort_keys=True)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    metric: str
    aggregation: str
    model: str
    properties: Mapping
    field_name: str | None = None

    @classmethod
    def from_json(cls, data: Mapping) -> Charge:
        return cls(
            metric=data["metric"],
            aggregation=data["aggregation"],
            model=data["model"],
            properties=data.get("properties") or {},
            field_name=data.get("field_name"),
        )

    def pricing_dict(self) -> dict:
        """The pricing contract's dict: {"model": ..., **parameters}."""
        return {"model": self.model, **self.properties}

    def snapshot(self) -> dict:
        return {
            "metric": self.metric,
            "aggregation": self.aggregation,
            "field_name": self.field_name,
            "model": self.model,
            "properties": self.properties,
        }


@dataclass(frozen=True)
class OrganisationInput:
    organisation_id: str
    currency: str
    tax_rate: Decimal
    discounts: list
    existed_in_period: bool
    credits_available_minor: int
    plan_id: int
    plan_code: str
    plan_version: int
    minimum_commitment: Decimal | None
    plan_definition: Mapping
    charges: tuple[Charge, ...]


@dataclass(frozen=True)
class Usage:
    units: Decimal
    event_amounts: tuple[Decimal, ...] = ()


@dataclass(frozen=True)
class LateEvent:
    event_id: str
    occurred_at: str
    ingested_at: str
    quantity: Decimal


@dataclass(frozen=True)
class LateUsage:
    """Events of a closed month not billed yet (see the module docstring)."""

    organisation_id: str
    metric: str
    original_period_start: date
    units_total: Decimal  # the month's units with these events
    units_billed: Decimal  # what the month's invoices billed so far
    amount_billed: Decimal  # unrounded
    amount_billed_minor: int  # as the lines were rounded
    currency: str  # of the month's invoice (or of the organisation when it had none)
    charge: Charge | None  # None: the plan did not price this metric that month
    original_invoice_number: str | None
    events: tuple[LateEvent, ...] = ()
    event_amounts: tuple[Decimal, ...] = ()


@dataclass(frozen=True)
class MonthInputs:
    period_start: date
    organisations: list[OrganisationInput]
    usage: dict[tuple[str, str], Usage]
    late: dict[str, list[LateUsage]]


def load_inputs(conn: sa.Connection, period_start: date, organisation_id: str | None = None) -> MonthInputs:
    """Everything pricing needs for the month, in three queries (for every organisation, or one)."""
    params = {**periods.bounds(period_start), "organisation_id": organisation_id}
    organisations = [
        OrganisationInput(
            organisation_id=row.organisation_id,
            currency=row.currency,
            tax_rate=row.tax_rate,
            discounts=parse_json(row.discounts),
            existed_in_period=row.existed_in_period,
            credits_available_minor=int(row.credits_available_minor),
            plan_id=row.plan_id,
            plan_code=row.plan_code,
            plan_version=row.plan_version,
            minimum_commitment=row.minimum_commitment,
            plan_definition=parse_json(row.plan_definition),
            charges=tuple(Charge.from_json(c) for c in parse_json(row.charges)),
        )
        for row in conn.execute(sa.text(load_sql("draft_organisations.sql")), params)
    ]
    usage = {
        (row.organisation_id, row.metric): Usage(row.units, tuple(row.event_amounts or ()))
        for row in conn.execute(sa.text(load_sql("draft_usage.sql")), params)
    }
    late: dict[str, list[LateUsage]] = defaultdict(list)
    for row in conn.execute(sa.text(load_sql("draft_late_usage.sql")), params):
        charge = parse_json(row.charge)
        late[row.organisation_id].append(
            LateUsage(
                organisation_id=row.organisation_id,
                metric=row.metric,
                original_period_start=row.original_period_start,
                units_total=row.units_total,
                units_billed=row.units_billed,
                amount_billed=row.amount_billed,
                amount_billed_minor=int(row.amount_billed_minor),
                currency=row.currency,
                charge=Charge.from_json(charge) if charge else None,
                original_invoice_number=row.original_invoice_number,
                events=tuple(LateEvent(e[0], e[1], e[2], Decimal(e[3])) for e in parse_json(row.events) or ()),
                event_amounts=tuple(row.event_amounts or ()),
            )
        )
    return MonthInputs(period_start, organisations, usage, dict(late))


# --------------------------------------------------------------------------------------------------
# Pricing (pure)
# --------------------------------------------------------------------------------------------------

LINE_KIND_TRUE_UP = "commitment_true_up"  # pricing's TRUE_UP_KIND, named as billing.invoice_lines has it


@dataclass(frozen=True)
class DraftLine:
    kind: str  # usage | commitment_true_up | late_usage
    metric: str | None
    aggregation: str | None
    units: Decimal | None
    model: str | None
    amount_unrounded: Decimal
    amount_minor: int
    original_period_start: date | None
    charge: Mapping
    late_events: tuple[LateEvent, ...] = ()


@dataclass
class Draft:
    organisation_id: str
    currency: str
    period_start: date
    plan_id: int
    plan_code: str
    plan_version: int
    plan_snapshot: dict
    tax_rate: Decimal
    subtotal_minor: int
    discount_minor: int
    tax_minor: int
    credits_applied_minor: int
    total_minor: int
    discounts_applied: list[dict]
    problems: list[dict]
    lines: list[DraftLine]


def _late_line(item: LateUsage) -> tuple[DraftLine, Decimal]:
    """The late line for one organisation, metric and closed month, and its unrounded amount."""
    charge = item.charge
    amounts = item.event_amounts if charge.model == "percentage" else ()
    amount_now = charge_amount(charge.pricing_dict(), item.units_total, amounts)
    # What is still owed in minor units: the month's total rounded once, less what its lines billed as
    # rounded. (Subtracting unrounded amounts and rounding each late line again would drift by a minor
    # unit per line.) The line's amount is then exact in minor units; pricing's one rounding keeps it.
    owed_minor = max(to_minor(amount_now, item.currency) - item.amount_billed_minor, 0)
    amount = from_minor(owed_minor, item.currency)
    line = DraftLine(
        kind="late_usage",
        metric=item.metric,
        aggregation=charge.aggregation,
        units=item.units_total - item.units_billed,
        model=charge.model,
        amount_unrounded=amount,
        amount_minor=0,  # set once the invoice is priced
        original_period_start=item.original_period_start,
        charge={
            **charge.snapshot(),
            "original_invoice_number": item.original_invoice_number,
            "units_total": item.units_total,
            "units_billed_before": item.units_billed,
            "amount_total": amount_now,
            "amount_billed_before": item.amount_billed,
        },
        late_events=item.events,
    )
    return line, amount


def _safe_minor(amount: Decimal, currency: str) -> int:
    try:
        return to_minor(amount, currency)
    except ValueError:
        return 0


def _late_key(metric: str, original_period_start: date) -> str:
    """The pricing key of a late-usage line: the same for late events priced now and lines carried over."""
    return f"late:{metric}:{original_period_start.isoformat()}"


def price_organisation(
    org: OrganisationInput,
    usage: Mapping[str, Usage],
    late: Iterable[LateUsage],
    period_start: date,
    carried: Iterable[DraftLine] = (),
) -> Draft:
    """One organisation's draft: a line per charge, late lines, then the invoice-level arithmetic.

    `carried`: late lines already priced (a replacement invoice keeps those of the invoice it replaces)."""
    period_end = periods.next_month(period_start)
    problems: list[dict] = []
    lines: list[DraftLine] = []
    inputs: list[LineInput] = []

    for charge in org.charges:
        used = usage.get(charge.metric, Usage(_ZERO))
        try:
            amount = charge_amount(charge.pricing_dict(), used.units, used.event_amounts)
        except ValueError as exc:
            problems.append({"metric": charge.metric, "reason": str(exc)})
            continue
        inputs.append(LineInput(f"usage:{charge.metric}", amount, "usage"))
        lines.append(
            DraftLine(
                kind="usage",
                metric=charge.metric,
                aggregation=charge.aggregation,
                units=used.units,
                model=charge.model,
                amount_unrounded=amount,
                amount_minor=0,  # set once the invoice is priced
                original_period_start=None,
                charge=charge.snapshot(),
            )
        )

    for item in late:
        if item.charge is None:
            continue  # the plan did not price this metric that month: nothing to bill
        where = f"late usage of {item.metric} for {periods.label(item.original_period_start)}"
        if item.currency != org.currency:
            problems.append(
                {"metric": item.metric, "reason": f"{where} is in {item.currency}, this invoice in {org.currency}"}
            )
            continue
        try:
            line, amount = _late_line(item)
        except ValueError as exc:
            problems.append({"metric": item.metric, "reason": f"{where}: {exc}"})
            continue
        key = _late_key(item.metric, item.original_period_start)
        inputs.append(LineInput(key, amount, "late_usage"))
        lines.append(line)

    for line in carried:
        key = _late_key(line.metric, line.original_period_start)
        inputs.append(LineInput(key, line.amount_unrounded, line.kind))
        lines.append(line)

    totals: InvoiceTotals | None = None
    try:
        totals = price_invoice(
            inputs,
            currency=org.currency,
            minimum_commitment=org.minimum_commitment,
            tax_rate=org.tax_rate,
            discounts=[Discount.from_mapping(d) for d in org.discounts],
            period_start=period_start,
            period_end=period_end,
            credits_available_minor=org.credits_available_minor,
        )
    except ValueError as exc:
        problems.append({"metric": None, "reason": f"invoice totals: {exc}"})

    if totals is not None:
        lines = [replace(line, amount_minor=p.amount_minor) for line, p in zip(lines, totals.lines)]
        for priced in totals.lines[len(lines) :]:  # pricing appends the commitment true-up, nothing else
            if priced.kind != TRUE_UP_KIND:
                raise RuntimeError(f"unexpected line {priced.kind!r} from price_invoice")
            lines.append(
                DraftLine(
                    kind=LINE_KIND_TRUE_UP,
                    metric=None,
                    aggregation=None,
                    units=None,
                    model=None,
                    amount_unrounded=priced.amount,
                    amount_minor=priced.amount_minor,
                    original_period_start=None,
                    charge={
                        "minimum_commitment": org.minimum_commitment,
                        "usage_subtotal_minor": totals.usage_subtotal_minor,
                    },
                )
            )
        subtotal, discount, tax = totals.subtotal_minor, totals.discount_minor, totals.tax_minor
        credits, total = totals.credits_applied_minor, totals.total_minor
        applied = [{"code": d.code, "kind": d.kind, "amount_minor": d.amount_minor} for d in totals.discounts]
    else:  # not priceable: lines rounded on their own, no discount, tax or credits (the draft is blocked)
        lines = [replace(line, amount_minor=_safe_minor(line.amount_unrounded, org.currency)) for line in lines]
        subtotal = total = sum(line.amount_minor for line in lines)
        discount = tax = credits = 0
        applied = []

    return Draft(
        organisation_id=org.organisation_id,
        currency=org.currency,
        period_start=period_start,
        plan_id=org.plan_id,
        plan_code=org.plan_code,
        plan_version=org.plan_version,
        plan_snapshot={
            "plan_id": org.plan_id,
            "code": org.plan_code,
            "version": org.plan_version,
            "minimum_commitment": org.minimum_commitment,
            "definition": org.plan_definition,
            "charges": [c.snapshot() for c in org.charges],
            "tax_rate": org.tax_rate,
            "discounts": org.discounts,
            "credits_available_minor": org.credits_available_minor,
        },
        tax_rate=org.tax_rate,
        subtotal_minor=subtotal,
        discount_minor=discount,
        tax_minor=tax,
        credits_applied_minor=credits,
        total_minor=total,
        discounts_applied=applied,
        problems=problems,
        lines=lines,
    )


def needs_draft(org: OrganisationInput, usage: Mapping[str, Usage], late: Iterable[LateUsage]) -> bool:
    charged = {c.metric for c in org.charges}
    return (
        any(metric in charged for metric in usage)
        or any(item.charge is not None for item in late)
        or (bool(org.minimum_commitment) and org.existed_in_period)
    )


def price_month(inputs: MonthInputs) -> list[Draft]:
    """The month's drafts, in organisation order (pure: no database)."""
    usage_by_org: dict[str, dict[str, Usage]] = defaultdict(dict)
    for (org_id, metric), used in inputs.usage.items():
        usage_by_org[org_id][metric] = used
    drafts = []
    for org in inputs.organisations:
        usage = usage_by_org.get(org.organisation_id, {})
        late = inputs.late.get(org.organisation_id, [])
        if needs_draft(org, usage, late):
            drafts.append(price_organisation(org, usage, late, inputs.period_start))
    return drafts


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

_STAGE = """
CREATE TEMP TABLE invoice_stage (
    organisation_id text, currency text, plan_id bigint, plan_code text, plan_version integer,
    plan_snapshot jsonb, tax_rate numeric, subtotal_minor bigint, discount_minor bigint, tax_minor bigint,
    credits_applied_minor bigint, total_minor bigint, discounts_applied jsonb, problems jsonb
) ON COMMIT DROP;
CREATE TEMP TABLE invoice_line_stage (
    organisation_id text, kind text, metric text, aggregation text, units numeric, model text,
    amount_unrounded numeric, amount_minor bigint, original_period_start date, charge jsonb
) ON COMMIT DROP;
CREATE TEMP TABLE invoice_late_event_stage (
    organisation_id text, metric text, original_period_start date, event_id text,
    occurred_at timestamptz, ingested_at timestamptz, quantity numeric
) ON COMMIT DROP;
"""

_INSERT_INVOICES = """
INSERT INTO billing.invoices (organisation_id, period_start, period_end, currency, status, plan_id, plan_code,
    plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor, credits_applied_minor,
    total_minor, discounts_applied, problems, build_id, created_by)
SELECT organisation_id, :period_start, :period_end, currency, 'draft', plan_id, plan_code,
    plan_version, plan_snapshot, tax_rate, subtotal_minor, discount_minor, tax_minor, credits_applied_minor,
    total_minor, discounts_applied, problems, :build_id, :actor
FROM invoice_stage
RETURNING invoice_id, organisation_id, currency, total_minor
"""

_INSERT_LINES = """
INSERT INTO billing.invoice_lines (invoice_id, kind, metric, aggregation, units, model, amount_unrounded,
    amount_minor, original_period_start, charge)
SELECT i.invoice_id, s.kind, s.metric, s.aggregation, s.units, s.model, s.amount_unrounded,
    s.amount_minor, s.original_period_start, s.charge
FROM invoice_line_stage s
JOIN billing.invoices i ON i.organisation_id = s.organisation_id AND i.build_id = :build_id
"""

_INSERT_LATE_EVENTS = """
INSERT INTO billing.invoice_late_events (line_id, event_id, occurred_at, ingested_at, quantity)
SELECT l.line_id, s.event_id, s.occurred_at, s.ingested_at, s.quantity
FROM invoice_late_event_stage s
JOIN billing.invoices i ON i.organisation_id = s.organisation_id AND i.build_id = :build_id
JOIN billing.invoice_lines l ON l.invoice_id = i.invoice_id AND l.kind = 'late_usage'
     AND l.metric = s.metric AND l.original_period_start = s.original_period_start
"""


def _copy(conn: sa.Connection, table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    cursor = conn.connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def write_drafts(conn: sa.Connection, period_start: date, drafts: list[Draft], build_id: uuid.UUID, actor: str):
    """COPY the drafts, their lines and late events in; returns [(invoice_id, organisation_id, ...)]."""
    conn.exec_driver_sql(_STAGE)
    _copy(
        conn,
        "invoice_stage",
        (
            "organisation_id", "currency", "plan_id", "plan_code", "plan_version", "plan_snapshot", "tax_rate",
            "subtotal_minor", "discount_minor", "tax_minor", "credits_applied_minor", "total_minor",
            "discounts_applied", "problems",
        ),  # fmt: skip
        (
            (
                d.organisation_id, d.currency, d.plan_id, d.plan_code, d.plan_version, dump_json(d.plan_snapshot),
                d.tax_rate, d.subtotal_minor, d.discount_minor, d.tax_minor, d.credits_applied_minor,
                d.total_minor, dump_json(d.discounts_applied), dump_json(d.problems),
            )  # fmt: skip
            for d in drafts
        ),
    )
    _copy(
        conn,
        "invoice_line_stage",
        (
            "organisation_id", "kind", "metric", "aggregation", "units", "model", "amount_unrounded",
            "amount_minor", "original_period_start", "charge",
        ),  # fmt: skip
        (
            (
                d.organisation_id, line.kind, line.metric, line.aggregation, line.units, line.model,
                line.amount_unrounded, line.amount_minor, line.original_period_start, dump_json(line.charge),
            )  # fmt: skip
            for d in drafts
            for line in d.lines
        ),
    )
    _copy(
        conn,
        "invoice_late_event_stage",
        ("organisation_id", "metric", "original_period_start", "event_id", "occurred_at", "ingested_at", "quantity"),
        (
            (d.organisation_id, line.metric, line.original_period_start, e.event_id, e.occurred_at, e.ingested_at,
             e.quantity)  # fmt: skip
            for d in drafts
            for line in d.lines
            for e in line.late_events
        ),
    )
    params = {**periods.bounds(period_start), "build_id": build_id, "actor": actor}
    created = conn.execute(sa.text(_INSERT_INVOICES), params).all()
    conn.execute(sa.text(_INSERT_LINES), params)
    conn.execute(sa.text(_INSERT_LATE_EVENTS), params)
    return created


@dataclass
class BuildResult:
    period_start: date
    build_id: uuid.UUID | None = None
    drafts: list[Draft] = field(default_factory=list)
    replaced: int = 0
    closed_at: datetime | None = None  # set when the month was already closed (nothing written)

    def summary(self) -> dict:
        totals: dict[str, int] = defaultdict(int)
        for d in self.drafts:
            totals[d.currency] += d.total_minor
        return {
            "period": periods.label(self.period_start),
            "build_id": str(self.build_id) if self.build_id else None,
            "drafts": len(self.drafts),
            "drafts_replaced": self.replaced,
            "lines": sum(len(d.lines) for d in self.drafts),
            "late_usage_lines": sum(1 for d in self.drafts for line in d.lines if line.kind == "late_usage"),
            "drafts_with_problems": sum(1 for d in self.drafts if d.problems),
            "total_minor_by_currency": dict(sorted(totals.items())),
            "month_closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }


def closed_at(conn: sa.Connection, period_start: date) -> datetime | None:
    return conn.execute(
        sa.text("SELECT closed_at FROM billing.invoice_periods WHERE period_start = :p"), {"p": period_start}
    ).scalar_one_or_none()


def month_fingerprint(conn: sa.Connection, period_start: date) -> tuple[int, Decimal]:
    row = conn.execute(sa.text(load_sql("month_fingerprint.sql")), periods.bounds(period_start)).one()
    return int(row.event_count), row.quantity_sum


def build_drafts(engine: Engine, period_start: date, actor: str) -> BuildResult:
    """Replace the month's drafts with freshly priced ones (see the module docstring)."""
    periods.check_period_start(period_start)
    with engine.begin() as conn:
        conn.execute(sa.text(LOCK_SQL), {"key": INVOICING_LOCK})
        closed = closed_at(conn, period_start)
        if closed is not None:
            return BuildResult(period_start, closed_at=closed)
        drafts = price_month(load_inputs(conn, period_start))
        fingerprint = month_fingerprint(conn, period_start)
        build_id = uuid.uuid4()
        replaced = conn.execute(
            sa.text(
                "DELETE FROM billing.invoices WHERE period_start = :p AND status = 'draft' RETURNING invoice_id"
            ),
            {"p": period_start},
        ).scalars().all()
        result = BuildResult(period_start, build_id, drafts, len(replaced))
        conn.execute(
            sa.text(
                "INSERT INTO billing.invoice_draft_builds (build_id, period_start, built_by, draft_count,"
                " event_count, quantity_sum, summary)"
                " VALUES (:b, :p, :actor, :n, :events, :quantity, CAST(:summary AS jsonb))"
            ),
            {
                "b": build_id,
                "p": period_start,
                "actor": actor,
                "n": len(drafts),
                "events": fingerprint[0],
                "quantity": fingerprint[1],
                "summary": dump_json(result.summary()),
            },
        )
        created = write_drafts(conn, period_start, drafts, build_id, actor)
        audit.record(
            conn,
            [
                audit.AuditEntry("invoice", str(invoice_id), "draft_replaced", actor, "draft", None,
                                 {"period": periods.label(period_start), "build_id": str(build_id)})  # fmt: skip
                for invoice_id in replaced
            ]
            + [
                audit.AuditEntry(
                    "invoice", str(row.invoice_id), "draft_created", actor, None, "draft",
                    {"organisation_id": row.organisation_id, "period": periods.label(period_start),
                     "currency": row.currency, "total_minor": row.total_minor, "build_id": str(build_id)},
                )  # fmt: skip
                for row in created
            ],
        )
    return result
