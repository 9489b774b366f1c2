"""The per-row and arithmetic rules of a draft build, as Great Expectations (GX Core 1.x) suites.

Two suites as code, one per grain of `invoice_drafts`: the drafts (one row per invoice) and their
lines. They run in an ephemeral context on DataFrames read from the month's current build; each
expectation carries its rule in `meta`, and every failing row names its organisation, so the check's
metadata tells finance which organisations and why. Values the rules compare with (the expected
total, the tax rounded in the invoice currency, a line's amount rounded once) are derived with
`billing_pipeline.money`, the same functions pricing uses, and not with floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_pipeline.invoicing import checks, periods
from billing_pipeline.invoicing.drafts import closed_at
from billing_pipeline.money import MINOR_UNIT_EXPONENTS, from_minor, to_minor
from billing_pipeline.telemetry import disable_telemetry

if TYPE_CHECKING:  # pandas (a third of a second) is imported where a check runs, not where definitions load
    import pandas as pd

AMOUNTS = ("subtotal_minor", "discount_minor", "tax_minor", "credits_applied_minor", "total_minor")
LINE_KINDS = ("usage", "commitment_true_up", "late_usage")

_DRAFTS = """
SELECT i.invoice_id, i.organisation_id, i.currency, i.status, i.period_start, i.period_end, i.tax_rate,
       i.subtotal_minor, i.discount_minor, i.tax_minor, i.credits_applied_minor, i.total_minor,
       coalesce(sum(l.amount_minor), 0) AS lines_amount_minor, count(l.line_id) AS line_count
FROM billing.invoices i
LEFT JOIN billing.invoice_lines l ON l.invoice_id = i.invoice_id
WHERE i.build_id = :build_id
GROUP BY i.invoice_id
ORDER BY i.invoice_id
"""

_LINES = """
SELECT l.line_id, i.organisation_id, i.currency, i.period_start, l.kind, l.metric, l.units,
       l.amount_unrounded, l.amount_minor, l.original_period_start
FROM billing.invoice_lines l
JOIN billing.invoices i ON i.invoice_id = l.invoice_id
WHERE i.build_id = :build_id
ORDER BY l.line_id
"""


def _or_none(fn, *args):
    try:
        return fn(*args)
    except ValueError:  # an invalid currency: the currency rule reports it
        return None


def _expected_tax(rate, currency: str, taxable_minor: int) -> int:
    return to_minor(rate * from_minor(int(taxable_minor), currency), currency)


def drafts_frame(rows: list[Mapping]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(rows[0].keys()) if rows else None)
    frame["expected_total_minor"] = (
        frame.subtotal_minor - frame.discount_minor + frame.tax_minor - frame.credits_applied_minor
    )
    frame["taxable_plus_tax_minor"] = frame.subtotal_minor - frame.discount_minor + frame.tax_minor
    taxable = frame.subtotal_minor - frame.discount_minor
    frame["expected_tax_minor"] = [
        _or_none(_expected_tax, rate, currency, amount)
        for rate, currency, amount in zip(frame.tax_rate, frame.currency, taxable)
    ]
    frame["expected_period_end"] = [periods.next_month(d) for d in frame.period_start]
    return frame


def lines_frame(rows: list[Mapping]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(rows[0].keys()) if rows else None)
    frame["expected_amount_minor"] = [
        _or_none(to_minor, amount, currency) for amount, currency in zip(frame.amount_unrounded, frame.currency)
    ]
    return frame


def drafts_suite(gx, gxe):
    """Rules for one row per draft invoice."""
    suite = gx.ExpectationSuite(name="invoice_drafts")

    def add(expectation, rule: str) -> None:
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)

    for column in ("organisation_id", "currency", "period_start", "tax_rate") + AMOUNTS:
        add(gxe.ExpectColumnValuesToNotBeNull(column=column), f"{column} is set")
    add(
        gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=sorted(MINOR_UNIT_EXPONENTS)),
        "currency is a supported ISO 4217 code",
    )
    add(gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["draft"]), "status is draft")
    for column in AMOUNTS:
        add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0), f"{column} is not negative")
    add(
        gxe.ExpectColumnPairValuesToBeEqual(column_A="total_minor", column_B="expected_total_minor"),
        "total = subtotal - discount + tax - credits",
    )
    add(
        gxe.ExpectColumnPairValuesToBeEqual(column_A="subtotal_minor", column_B="lines_amount_minor"),
        "subtotal = sum of the lines",
    )
    add(
        gxe.ExpectColumnPairValuesToBeEqual(column_A="tax_minor", column_B="expected_tax_minor"),
        "tax = tax_rate x (subtotal - discount), rounded once half-up in the currency",
    )
    add(
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="subtotal_minor", column_B="discount_minor", or_equal=True
        ),
        "discount <= subtotal",
    )
    add(
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="taxable_plus_tax_minor", column_B="credits_applied_minor", or_equal=True
        ),
        "credits applied <= subtotal - discount + tax",
    )
    add(
        gxe.ExpectColumnPairValuesToBeEqual(column_A="period_end", column_B="expected_period_end"),
        "the period is one calendar month",
    )
    add(gxe.ExpectColumnValuesToBeBetween(column="line_count", min_value=1), "a draft has lines")
    add(
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["organisation_id", "period_start", "currency"]),
        "one draft per organisation, month and currency",
    )
    return suite


def lines_suite(gx, gxe):
    """Rules for one row per draft line."""
    suite = gx.ExpectationSuite(name="invoice_draft_lines")

    def add(expectation, rule: str) -> None:
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)

    add(gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(LINE_KINDS)), "line kind is known")
    for column in ("amount_minor", "amount_unrounded"):
        add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0), f"line {column} is not negative")
    add(
        gxe.ExpectColumnPairValuesToBeEqual(column_A="amount_minor", column_B="expected_amount_minor"),
        "line amount rounded once, half-up, to the currency's minor unit",
    )
    late = {"row_condition": 'kind=="late_usage"', "condition_parser": "pandas"}
    add(gxe.ExpectColumnValuesToNotBeNull(column="original_period_start", **late), "late line names its month")
    add(
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="period_start", column_B="original_period_start", **late),
        "late usage is of an earlier month",
    )
    add(
        gxe.ExpectColumnValuesToNotBeNull(
            column="metric", row_condition='kind!="commitment_true_up"', condition_parser="pandas"
        ),
        "a usage line names its metric",
    )
    add(
        gxe.ExpectColumnValuesToBeBetween(
            column="units", min_value=0, row_condition='kind=="usage"', condition_parser="pandas"
        ),
        "usage units are not negative",
    )
    return suite


def _findings(result, frame_name: str) -> list[dict]:
    findings = []
    for item in result.results:
        if item.success:
            continue
        rule = (item.expectation_config.meta or {}).get("rule", item.expectation_config.type)
        rows = item.result.get("unexpected_index_list") or []
        if not rows:  # an expectation over the whole frame (or an exception): no row to blame
            error = (item.exception_info or {}).get("exception_message")
            findings.append({"organisation_id": None, "reason": f"{frame_name}: {rule}", "error": error})
        for row in rows:
            values = {k: str(v) for k, v in row.items() if k != "organisation_id"}
            findings.append({"organisation_id": row.get("organisation_id"), "reason": f"{frame_name}: {rule}", **values})
    return findings


def validate_build(engine: Engine, period_start: date) -> tuple[checks.Build | None, checks.CheckOutcome]:
    """Run both suites on the month's current build; the outcome of the `draft_rules` check."""
    with checks.checking_connection(engine) as conn:
        closed = closed_at(conn, period_start)
        if closed is not None:
            return None, checks.closed_month_outcomes([checks.DRAFT_RULES], closed)[0]
        build = checks.current_build(conn, period_start)
        if build is None:
            return None, checks.missing_build_outcomes([checks.DRAFT_RULES], period_start)[0]
        params = {"build_id": build.build_id}
        drafts = [dict(r._mapping) for r in conn.execute(sa.text(_DRAFTS), params)]
        lines = [dict(r._mapping) for r in conn.execute(sa.text(_LINES), params)]
    if not drafts:
        return build, checks.CheckOutcome(checks.DRAFT_RULES, True, "no drafts this month")

    disable_telemetry()
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("invoicing")
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["organisation_id"]}
    findings: list[dict] = []
    evaluated = 0
    for name, frame, suite in (
        ("drafts", drafts_frame(drafts), drafts_suite(gx, gxe)),
        ("lines", lines_frame(lines), lines_suite(gx, gxe)),
    ):
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
        )
        result = validation.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        evaluated += len(result.results)
        findings += _findings(result, name)
    stats = {"expectations": evaluated, "drafts": len(drafts), "lines": len(lines)}
    return build, checks.outcome(checks.DRAFT_RULES, findings, "every draft and line follows the rules", stats)
