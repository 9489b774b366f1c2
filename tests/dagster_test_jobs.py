"""A small code location for the Dagster instance tests (tests/dagster_test_workspace.yaml).

`hello_job` finishes at once; `sleepy_job` attaches its run worker to the embedded warehouse (as the
project's runs do) and sleeps, so a test can kill the worker mid-run.
"""

import time

import dagster as dg


@dg.op
def hello(context) -> int:
    context.log.info("hello from the run worker")
    return 1


@dg.job
def hello_job():
    hello()


@dg.op
def sleep_attached(context) -> None:
    import sqlalchemy as sa

    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    with get_engine(load_settings()).connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    context.log.info("attached to the warehouse; sleeping")
    time.sleep(600)


@dg.job(executor_def=dg.in_process_executor)
def sleepy_job():
    sleep_attached()


@dg.op
def attach_in_step(context) -> None:
    """Runs in a step subprocess of the multiprocess executor (a child of the run worker)."""
    import os

    import sqlalchemy as sa

    from billing_pipeline.settings import load_settings
    from billing_pipeline.warehouse import get_engine

    with get_engine(load_settings()).connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    context.log.info(f"step process {os.getpid()} attached")


@dg.job
def attached_steps_job():
    attach_in_step.alias("first_step")()
    attach_in_step.alias("second_step")()


defs = dg.Definitions(jobs=[hello_job, sleepy_job, attached_steps_job])
