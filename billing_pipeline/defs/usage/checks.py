"""dbt unit tests (given rows -> expected rows, one per aggregation type) as Dagster asset checks.

dagster-dbt turns dbt *data* tests into asset checks but drops unit-test results, so each unit test
in the manifest becomes a check here, on the model it tests, and one `dbt test --select
test_type:unit` run evaluates them all. They check the models' SQL against fixed rows, not the
warehouse's data, so they run once per run that selects them rather than on every partition.
dbt builds unit-test fixtures with the column types of the models' inputs: the staging views and
the models must exist (any run of usage_dbt_models creates them).
"""

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from billing_pipeline.defs.resources import WarehouseResource
from billing_pipeline.defs.usage import late_events
from billing_pipeline.defs.usage.assets import usage_translator
from billing_pipeline.defs.usage.project import dbt_environment, prune_invocation_artifacts

_MAX_MESSAGE = 4000


def unit_test_specs(manifest: Mapping[str, Any]) -> dict[str, dg.AssetCheckSpec]:
    """One check spec per dbt unit test, keyed by the unit test's unique_id."""
    specs = {}
    for unique_id, unit_test in sorted(manifest.get("unit_tests", {}).items()):
        model_ids = [n for n in unit_test["depends_on"]["nodes"] if n.startswith("model.")]
        named = [n for n in model_ids if n.split(".")[-1] == unit_test["model"]]
        model_id = (named or model_ids or [None])[0]
        if model_id is None:
            continue
        asset_key = usage_translator.get_asset_key(manifest["nodes"][model_id])
        specs[unique_id] = dg.AssetCheckSpec(
            name=unit_test["name"],
            asset=asset_key,
            description="dbt unit test: " + (unit_test.get("description") or unit_test["name"]).strip(),
            metadata={"dbt/unique_id": unique_id},
        )
    return specs


def build_unit_test_checks(manifest_path: Path) -> dg.AssetChecksDefinition | None:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    specs = unit_test_specs(manifest)
    if not specs:
        return None
    unique_id_by_key = {spec.key: unique_id for unique_id, spec in specs.items()}

    @dg.multi_asset_check(specs=list(specs.values()), name="usage_dbt_unit_tests", can_subset=True)
    def usage_dbt_unit_tests(
        context: dg.AssetCheckExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = [key for key in context.selected_asset_check_keys if key in unique_id_by_key]
        names = " ".join(f"unit_test:{specs[unique_id_by_key[key]].name}" for key in selected)
        # No --vars: each unit test sets the window it tests (overrides.vars).
        with late_events.usage_dbt_lock(warehouse.engine), dbt_environment(warehouse.settings()):
            invocation = dbt.cli(["test", "--select", names or "test_type:unit"], raise_on_error=False)
            invocation.wait()
        results = {r["unique_id"]: r for r in invocation.get_artifact("run_results.json")["results"]}
        prune_invocation_artifacts(invocation.target_path)
        for key in selected:
            unique_id = unique_id_by_key[key]
            result = results.get(unique_id)
            if result is None:
                yield dg.AssetCheckResult(
                    asset_key=key.asset_key,
                    check_name=key.name,
                    passed=False,
                    metadata={"status": "not run", "dbt/unique_id": unique_id},
                )
                continue
            message = (result.get("message") or "").strip()
            shown = {"message": dg.MetadataValue.md(f"```\n{message[:_MAX_MESSAGE]}\n```")} if message else {}
            yield dg.AssetCheckResult(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=result["status"] == "pass",
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "status": result["status"],
                    "dbt/unique_id": unique_id,
                    "execution_time_s": round(float(result.get("execution_time") or 0), 3),
                    **shown,
                },
            )

    return usage_dbt_unit_tests
