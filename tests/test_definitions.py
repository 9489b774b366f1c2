"""The code location loads, and every asset, job, schedule and sensor resolves."""

import dagster as dg


def test_code_location_loads_and_resolves():
    from billing_pipeline.definitions import defs, domain_modules

    assert "billing_pipeline.defs.ingestion" in domain_modules()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"warehouse_events", "event_reconciliation", "edge_retention"} <= keys
    for job in defs.resolve_all_job_defs():
        assert job.name
    for schedule in defs.schedules or []:
        resolved = defs.resolve_schedule_def(schedule.name)
        assert resolved.job_name or resolved.target
    for sensor in defs.sensors or []:
        assert defs.resolve_sensor_def(sensor.name).name == sensor.name
    # every resource an asset needs is bound
    for key in graph.get_all_asset_keys():
        assert graph.get(key).assets_def is not None


def test_ingestion_assets_are_single_run_backfills():
    from billing_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    for name in ("warehouse_events", "event_reconciliation"):
        node = graph.get(dg.AssetKey(name))
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assert node.group_name == "ingestion"
