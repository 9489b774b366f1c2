"""The code location loads, and every asset, job, schedule and sensor resolves."""

import dagster as dg


def test_code_location_loads_and_every_definition_resolves():
    from billing_pipeline.definitions import defs, domain_modules

    assert {f"billing_pipeline.defs.{d}" for d in (
        "ingestion", "usage", "invoicing", "payments", "calls", "accounts", "operations"
    )} <= set(domain_modules())
    repository = defs.get_repository_def()  # resolves every asset, check, job, schedule and sensor
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"warehouse_events", "usage_period", "finalized_invoices", "payment_reconciliation",
            "call_reconciliation", "grace_periods"} <= keys
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    for schedule in repository.schedule_defs:
        assert schedule.job_name in jobs, schedule.name
    for sensor in repository.sensor_defs:
        assert {t.job_name for t in sensor.targets} <= jobs, sensor.name
    # every resource an asset or check asks for is bound in the code location
    bound = set(repository.get_top_level_resources()) | {"io_manager"}  # Dagster supplies the default
    for assets_def in graph.assets_defs:
        assert assets_def.required_resource_keys <= bound, assets_def.keys


def test_hourly_and_daily_assets_backfill_a_range_in_one_run():
    """Monthly invoicing is the exception by design: each month's checks gate only that month."""
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    ranged = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable or node.partitions_def is None:
            continue
        if isinstance(node.partitions_def, dg.MonthlyPartitionsDefinition):
            continue
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), key
        ranged.append(key.to_user_string())
    assert {"warehouse_events", "event_reconciliation", "edge_retention", "usage_daily", "stripe_sync"} <= set(ranged)
    assert graph.get(dg.AssetKey("warehouse_events")).group_name == "ingestion"
