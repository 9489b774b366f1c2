"""Dagster wiring, one package per domain; each exposes `defs` (a dagster.Definitions)."""
