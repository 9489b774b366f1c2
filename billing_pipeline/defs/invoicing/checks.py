"""The checks on invoice_drafts that gate finalization: SQL ones in one step, the GX suite in another."""

import dagster as dg

from billing_pipeline.audit import run_actor
from billing_pipeline.defs.invoicing.assets import invoice_drafts
from billing_pipeline.defs.resources import AlertResource, EdgeStoreResource, WarehouseResource
from billing_pipeline.invoicing import checks, expectations, periods


def _result(outcome: checks.CheckOutcome) -> dg.AssetCheckResult:
    detail = outcome.detail()
    return dg.AssetCheckResult(
        asset_key=invoice_drafts.key,
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        description=outcome.summary,
        metadata={
            "summary": outcome.summary,
            "organisations": dg.MetadataValue.json(detail["organisations"]),
            "organisation_count": detail["organisation_count"],
            "finding_count": detail["finding_count"],
            "findings": dg.MetadataValue.json(detail["findings"]),
            **{k: v for k, v in outcome.stats.items() if isinstance(v, (int, str))},
        },
    )


def _alert_failures(alerts: AlertResource, period_start, outcomes) -> None:
    failed = [o for o in outcomes if o.blocking and not o.passed]
    if failed:
        alerts.send(
            f"Invoicing {periods.label(period_start)} blocked: {len(failed)} check(s) failed",
            {o.name: f"{o.summary} (organisations: {', '.join(o.organisations[:10])})" for o in failed},
        )


def _spec(name: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name,
        asset=invoice_drafts,
        blocking=name in checks.BLOCKING_CHECKS,
        description=checks.DESCRIPTIONS[name],
    )


@dg.multi_asset_check(specs=[_spec(n) for n in checks.SQL_CHECKS + (checks.TOTAL_JUMP,)])
def invoice_drafts_sql_checks(
    context: dg.AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    edge: EdgeStoreResource,
    alerts: AlertResource,
):
    period_start = context.partition_time_window.start.date()
    with edge.connect() as edge_conn:
        build, outcomes = checks.run_sql_checks(warehouse.engine, edge_conn, period_start)
    checks.record_outcomes(warehouse.engine, build, outcomes, run_actor(context.run.run_id))
    _alert_failures(alerts, period_start, outcomes)
    for outcome in outcomes:
        yield _result(outcome)


@dg.multi_asset_check(specs=[_spec(checks.DRAFT_RULES)])
def invoice_drafts_rules(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, alerts: AlertResource):
    period_start = context.partition_time_window.start.date()
    build, outcome = expectations.validate_build(warehouse.engine, period_start)
    checks.record_outcomes(warehouse.engine, build, [outcome], run_actor(context.run.run_id))
    _alert_failures(alerts, period_start, [outcome])
    yield _result(outcome)
