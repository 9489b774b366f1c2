"""The code location: every domain package under `billing_pipeline/defs/` contributes its `defs`."""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

from billing_pipeline import defs as defs_package
from billing_pipeline.defs.resources import RESOURCES
from billing_pipeline.telemetry import disable_telemetry, quiet_library_warnings

disable_telemetry()
quiet_library_warnings()


def domain_modules() -> list[str]:
    return sorted(
        f"{defs_package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(defs_package.__path__)
        if info.ispkg
    )


def build_definitions() -> dg.Definitions:
    domains = [importlib.import_module(name).defs for name in domain_modules()]
    return dg.Definitions.merge(*domains, dg.Definitions(resources=RESOURCES))


defs = build_definitions()
