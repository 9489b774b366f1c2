"""Calls: Vapi webhook events applied to billing.calls (and wallets), the daily Vapi sync and call
reconciliation. Jobs, schedules and the inbox sensor are in defs/operations."""

import dagster as dg

from billing_pipeline.audit import run_actor
from billing_pipeline.calls import apply  # noqa: F401 - registers the "vapi" inbox handler
from billing_pipeline.defs.calls.assets import VapiResource, call_reconciliation, vapi_calls
from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.payments.inbox import process_inbox


@dg.asset(group_name="calls", kinds={"postgres"})
def calls(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Vapi end-of-call reports from billing.webhook_inbox applied to billing.calls, each call charged
    once to its organisation's wallet (retries with backoff, then dead letters)."""
    result = process_inbox(warehouse.engine, ["vapi"], actor=run_actor(context.run_id))
    return dg.MaterializeResult(
        metadata={
            "events_applied": result.processed_total,
            "events_to_retry": result.retried,
            "events_dead_lettered": len(result.dead_lettered),
        }
    )


defs = dg.Definitions(assets=[calls, vapi_calls, call_reconciliation], resources={"vapi": VapiResource()})
