"""weighted_sum's opening level carried from the previous month's usage_period row (issue 19).

Each run here is a day's partition of the usage job (Dagster, real dbt, the visibility horizon as in
production), so each run replaces one month and takes its opening level from the month before. The
expected levels are summed here, in Python, from every event before the month: the carry must equal
that full sum exactly, whatever happened since the previous month was built.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa
from test_usage_pipeline import (
    USAGE_JOB,
    Event,
    expected_period,
    insert_events,
    insert_metrics,
    month_bounds,
    run_range,
    utc,
    valid,
)

pytestmark = pytest.mark.slow

D = Decimal
JAN, FEB, MAR, APR = date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1), date(2025, 4, 1)


def storage(event_id: str, org: str, quantity, *at) -> Event:
    return Event(event_id, org, "p1", "storage_gb", D(quantity), utc(*at))


# org_a: a level every month; org_b: negative changes (allowed for storage_gb); org_d: back to 0 in
# January, no row in February (level 0, no event), again in March; org_e: first change in March.
HISTORY = [
    storage("dec_a", "org_a", 7, 2024, 12, 20),
    storage("jan_a", "org_a", "2.5", 2025, 1, 10, 6),
    storage("jan_b", "org_b", 20, 2025, 1, 3),
    storage("jan_b2", "org_b", "-4.25", 2025, 1, 28, 13),
    storage("jan_d", "org_d", 5, 2025, 1, 5),
    storage("jan_d2", "org_d", -5, 2025, 1, 25),
    storage("feb_a", "org_a", -1, 2025, 2, 14),
    storage("feb_b", "org_b", 3, 2025, 2, 2),
    storage("mar_a", "org_a", 4, 2025, 3, 9),
    storage("mar_d", "org_d", 6, 2025, 3, 30),
    storage("mar_e", "org_e", 1, 2025, 3, 31, 23, 59, 59),
    storage("apr_b", "org_b", -2, 2025, 4, 3),
    Event("jan_tokens", "org_a", "p1", "tokens", D(3), utc(2025, 1, 10)),
]


def expected_levels(events: list[Event], month: date) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """(opening, closing, units) of every storage_gb row the month must have, from all events."""
    start, end = month_bounds(month)
    units = expected_period(events, month)
    out = {}
    for org in sorted({e.organisation_id for e in events}):
        mine = [e for e in events if valid(e) and e.metric == "storage_gb" and e.organisation_id == org]
        opening = sum((e.quantity for e in mine if e.occurred_at < start), D(0))
        inside = [e for e in mine if start <= e.occurred_at < end]
        if opening == 0 and not inside:
            continue
        out[org] = (opening, opening + sum((e.quantity for e in inside), D(0)), units[(org, "storage_gb")])
    return out


def levels(engine: sa.Engine, month: date) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    query = sa.text(
        "SELECT organisation_id, opening_level, closing_level, units FROM usage.usage_period"
        " WHERE metric = 'storage_gb' AND period_start = :m"
    )
    with engine.connect() as conn:
        return {
            r.organisation_id: (r.opening_level, r.closing_level, r.units)
            for r in conn.execute(query, {"m": month})
        }


def run_month(instance, month: date) -> None:
    """Every day of the month in one run (its partition range): usage_daily has all of them."""
    last = month_bounds(month)[1].date() - timedelta(days=1)
    assert run_range(instance, month.isoformat(), last.isoformat()).success


def run_day(instance, day: str) -> None:
    """One day's partition: recomputes its month from usage_daily and the month's raw events."""
    assert USAGE_JOB.execute_in_process(instance=instance, partition_key=day).success


def set_closing(engine: sa.Engine, month: date, org: str, level) -> None:
    """Writes a closing level no full sum would give: a month built next shows whether it carried it."""
    with engine.begin() as conn:
        updated = conn.execute(
            sa.text(
                "UPDATE usage.usage_period SET closing_level = :level"
                " WHERE period_start = :m AND organisation_id = :org AND metric = 'storage_gb'"
            ),
            {"level": level, "m": month, "org": org},
        ).rowcount
    assert updated == 1


@pytest.fixture
def history(engine) -> None:
    """The metrics and HISTORY's events in the warehouse (each test keeps its own list of them)."""
    insert_metrics(engine)
    insert_events(engine, HISTORY)


def test_carried_opening_equals_the_full_sum_month_by_month_and_takes_a_late_event(engine, history):
    events, instance = list(HISTORY), dg.DagsterInstance.ephemeral()

    # January: no month before it built (December has an event, never a row): the full sum
    run_month(instance, JAN)
    assert levels(engine, JAN) == expected_levels(events, JAN)
    assert levels(engine, JAN)["org_a"][0] == 7
    # February and March carry from the month before; org_d has no February row (level 0) and
    # opens March at 0 from that missing row; org_e's first change is in March
    for month in (FEB, MAR):
        run_month(instance, month)
        assert levels(engine, month) == expected_levels(events, month), month
    assert "org_d" not in levels(engine, FEB)
    assert levels(engine, MAR)["org_d"][0] == 0

    # The carry is what April reads: a closing level that no sum of events gives shows up as
    # April's opening level (with the model summing all history instead, April opens at 12.5)
    set_closing(engine, MAR, "org_a", "1000")
    run_month(instance, APR)
    assert levels(engine, APR)["org_a"][0] == 1000
    set_closing(engine, MAR, "org_a", expected_levels(events, MAR)["org_a"][1])
    run_day(instance, "2025-04-10")
    assert levels(engine, APR) == expected_levels(events, APR)

    # A late January event, ingested after February and March were built. March refreshed alone
    # (its day's partition; January and February are not run again) opens with it: org_b's
    # February row was computed before it was ingested, so its closing level is not carried.
    late = storage("late_jan_b", "org_b", "0.5", 2025, 1, 20)
    insert_events(engine, [late])
    events.append(late)
    feb_before = levels(engine, FEB)
    run_day(instance, "2025-03-10")
    assert levels(engine, FEB) == feb_before  # stale: not run again
    assert levels(engine, MAR) == expected_levels(events, MAR)
    assert levels(engine, MAR)["org_b"][0] == D("19.25")  # 20 - 4.25 + 3 + 0.5
    # ... and every other organisation still carries: org_a's February closing level is read
    set_closing(engine, FEB, "org_a", "500")
    run_day(instance, "2025-03-10")
    assert levels(engine, MAR)["org_a"][0] == 500


def test_changed_definition_and_unbuilt_month_fall_back_to_the_full_sum(engine, history):
    events, instance = list(HISTORY), dg.DagsterInstance.ephemeral()
    run_month(instance, JAN)
    # A gap: February is never built, so March cannot carry (January's closing levels, made
    # wrong on purpose, are not read)
    set_closing(engine, JAN, "org_a", "1000")
    set_closing(engine, JAN, "org_b", "1000")
    run_month(instance, MAR)
    assert levels(engine, MAR) == expected_levels(events, MAR)

    # February built (from January's true levels), then storage_gb no longer allows negative
    # quantities: its definition changed, so April sums every earlier change again, now without
    # the negative ones
    for org in ("org_a", "org_b"):
        set_closing(engine, JAN, org, expected_levels(events, JAN)[org][1])
    run_month(instance, FEB)
    run_month(instance, MAR)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE billing.billable_metrics SET allow_negative = false WHERE code = 'storage_gb'")
        )
    run_month(instance, APR)
    positive = [e for e in events if e.quantity >= 0]
    got = levels(engine, APR)
    want = expected_levels(positive, APR)
    assert {org: v[0] for org, v in got.items()} == {org: v[0] for org, v in want.items()}
    assert got["org_b"][0] == 23  # 20 + 3, the -4.25 no longer counts
    assert got["org_d"][0] == 11  # 5 + 6, the -5 no longer counts


def test_a_deleted_event_reaches_a_later_month_refreshed_alone_and_a_truncate_stops_the_carry(engine, history):
    events, instance = list(HISTORY), dg.DagsterInstance.ephemeral()
    for month in (JAN, FEB, MAR):
        run_month(instance, month)

    # The operator deletes a January event (sql/0006_event_ids.sql) and reruns none of its days yet:
    # March refreshed alone must not carry February's level, which still counts it (the deletion log,
    # sql/0092_event_deletions.sql); org_a's carry is untouched
    set_closing(engine, FEB, "org_a", "55")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM billing.events WHERE event_id = 'jan_b'"))
        logged = conn.execute(
            sa.text("SELECT organisation_id, metric, events FROM billing.event_deletions")
        ).all()
    assert [tuple(r) for r in logged] == [("org_b", "storage_gb", 1)]
    events = [e for e in events if e.event_id != "jan_b"]
    run_day(instance, "2025-03-10")
    assert levels(engine, FEB)["org_b"][0] == D("15.75")  # stale until February runs again
    assert levels(engine, MAR)["org_b"][0] == D("-1.25")  # -4.25 + 3, summed again
    assert levels(engine, MAR)["org_a"][0] == 55  # carried

    # January and February run again, after the deletion: March carries again
    run_day(instance, "2025-01-03")
    run_day(instance, "2025-02-10")
    assert levels(engine, JAN) == expected_levels(events, JAN)
    set_closing(engine, FEB, "org_b", "77")
    run_day(instance, "2025-03-10")
    assert levels(engine, MAR)["org_b"][0] == 77

    # A TRUNCATE of the events is logged without organisation (seen here, then rolled back) ...
    with engine.connect() as conn:
        with conn.begin() as transaction:
            conn.execute(sa.text("TRUNCATE billing.events"))
            marker = conn.execute(
                sa.text("SELECT count(*) FROM billing.event_deletions WHERE organisation_id IS NULL")
            ).scalar()
            transaction.rollback()
    assert marker == 1
    # ... and such a row stops every carry: March sums every change again, org_a included
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO billing.event_deletions (organisation_id, metric) VALUES (NULL, NULL)"))
    set_closing(engine, FEB, "org_a", "99")
    run_day(instance, "2025-03-10")
    assert levels(engine, MAR) == expected_levels(events, MAR)
