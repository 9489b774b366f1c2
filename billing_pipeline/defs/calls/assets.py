"""Calls assets: the daily Vapi sync and the call reconciliation with its webhook-reliability check."""

import dagster as dg

from billing_pipeline.audit import run_actor
from billing_pipeline.calls import reconcile
from billing_pipeline.calls.sync import replace_provider_calls
from billing_pipeline.defs.findings import findings_metadata
from billing_pipeline.defs.partitions import daily
from billing_pipeline.defs.resources import AlertResource, WarehouseResource
from billing_pipeline.providers.vapi_api import VapiClient, VapiError
from billing_pipeline.settings import load_settings


class VapiResource(dg.ConfigurableResource):
    """Vapi's REST API: key and base URL from VAPI_API_KEY / VAPI_API_BASE (tests and the demo: the fake)."""

    page_limit: int = 100  # rows per GET /call; a full page splits the window

    def client(self) -> VapiClient:
        settings = load_settings()
        if settings.vapi_api_key is None:
            raise dg.Failure("VAPI_API_KEY is not set: cannot list Vapi calls")
        return VapiClient(
            settings.vapi_api_key.get_secret_value(),
            base_url=settings.vapi_api_base,
            page_limit=self.page_limit,
        )


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="calls",
    kinds={"postgres"},
)
def vapi_calls(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, vapi: VapiResource
) -> dg.MaterializeResult:
    """Vapi's calls created that day (UTC), as `GET /call` returns them, in billing.vapi_calls.

    Vapi's list has no cursor: a window whose answer fills a page is split in halves until none does
    (providers.vapi_api.VapiClient.list_calls). Re-running a day replaces its rows, picking up costs
    that settled since.
    """
    start, end = context.partition_time_window
    try:
        with vapi.client() as client:
            calls = client.list_calls(start, end)
    except VapiError as exc:  # down through the retries: nothing of the window is written
        raise dg.Failure(
            description=f"vapi sync of the window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC failed,"
            f" nothing of it was written (the next run reads the whole window again): {exc}"
        ) from exc
    with warehouse.engine.begin() as conn:
        stored = replace_provider_calls(conn, start, end, calls)
    ended = [c for c in calls if c.get("status") == "ended"]
    return dg.MaterializeResult(
        metadata={
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "calls": stored,
            "ended_calls": len(ended),
            "calls_without_cost": sum(1 for c in ended if c.get("cost") is None),
        }
    )


@dg.asset(
    partitions_def=daily,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[vapi_calls],
    group_name="calls",
    kinds={"postgres"},
    # Not partitioned: partitioned check specs are a Dagster preview; the result names its days.
    check_specs=[dg.AssetCheckSpec("webhook_reliability", asset="call_reconciliation")],
)
def call_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, alerts: AlertResource
):
    """Vapi's calls against billing.calls, per day, into recon.discrepancies and recon.call_reconciliation.

    A call Vapi has and we do not (its end-of-call webhook never came) is inserted with
    reconciled = true and charged once to its organisation's wallet (`missing_call`); a cost that
    differs from what we charged is an `amount_mismatch`; a call we have that Vapi does not list is
    `missing_at_provider`. The check `webhook_reliability` (WARN) fails when under 95% of a day's calls
    arrived by webhook, and an alert is sent.
    """
    start, end = context.partition_time_window
    with warehouse.engine.begin() as conn:
        result = reconcile.reconcile_days(conn, start.date(), end.date(), actor=run_actor(context.run_id))
    unreliable = result.unreliable_days()
    alert = "none"
    if unreliable:
        delivered = alerts.send(
            "Vapi webhook reliability under 95%",
            {
                d.recon_date.isoformat(): f"{d.webhook_calls}/{d.provider_calls} calls by webhook, "
                f"{d.recovered_calls} recovered ({reconcile.usd(d.recovered_revenue_minor)})"
                for d in unreliable
            },
        )
        alert = "posted" if delivered else "logged (BILLING_ALERT_WEBHOOK_URL unset or unreachable)"
    provider_calls, webhook_calls = result.total("provider_calls"), result.total("webhook_calls")
    yield dg.MaterializeResult(
        metadata={
            "days": len(result.days),
            "provider_calls": provider_calls,
            "missing_call": result.total("recovered_calls"),
            "recovered_revenue_minor": result.total("recovered_revenue_minor"),
            "recovered_revenue": reconcile.usd(result.total("recovered_revenue_minor")),
            "amount_mismatch": result.total("amount_mismatches"),
            "missing_at_provider": result.total("missing_at_provider"),
            "refused_calls": result.total("refused_calls"),
            "unattributed_calls": result.total("unattributed_calls"),
            "calls_charged_now": result.charges.counts["charged"],
            "charged_now_minor": result.charges.charged_minor,
            "per_day": dg.MetadataValue.md(reconcile.days_markdown(result.days)),
            "worst_findings": dg.MetadataValue.md(reconcile.findings_markdown(result.worst)),
            **findings_metadata(warehouse.engine, reconcile.SOURCE, start.date(), end.date()),
        }
    )
    yield dg.AssetCheckResult(
        check_name="webhook_reliability",
        passed=not unreliable,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"share of the day's Vapi calls whose end-of-call webhook arrived; at least "
        f"{reconcile.RELIABILITY_THRESHOLD:.0%} expected",
        metadata={
            "window": f"{start.date()} to {end.date()} (end excluded)",
            "provider_calls": provider_calls,
            "webhook_calls": webhook_calls,
            "reliability": "-" if not provider_calls else f"{webhook_calls / provider_calls:.2%}",
            "days_under_threshold": ", ".join(d.recon_date.isoformat() for d in unreliable) or "none",
            "alert": alert,
        },
    )
