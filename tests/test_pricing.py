"""Charge models (Lago semantics) and invoice arithmetic.

Worked examples cite the public page they come from. Property-based tests (hypothesis) cover
monotonicity in units and the invoice identity total = subtotal - discount + tax - credits >= 0.

Compared with Lago's current code and specs (getlago/lago-api at 1b1c24a, 2026-08-21), case by case:
- standard: app/services/charge_models/standard_service.rb, units x amount (zero units: zero). Same.
- graduated: graduated_service.rb + amount_details/range_graduated_service.rb and
  spec/services/charge_models/graduated_service_spec.rb: aggregation 0 (first tier's flat, 2; 0 when
  that flat is 0 with a decimal first tier), 1, 10, 11, 12, 21; "with decimal adjacent ranges" 0.05
  and 0.5. Differences found and fixed: zero units cost the first tier's flat (was 0); adjacent
  decimal ranges accepted and counted without the +1 (were refused); a tier's flat is charged
  whenever the walk reaches it.
- volume: volume_service.rb and its spec: 0 (first tier's flat, 10; 0 with a zero first tier), 1,
  100, 100.5, 101, 200, 300. Difference fixed: zero units cost the first tier's flat (was 0).
- graduated_percentage: graduated_percentage_service.rb + range_graduated_percentage_service.rb and
  its spec: 0 (200), 1, 10, 11, 12, 21. Difference fixed: zero units cost the first tier's flat.
  Lago keeps the +1 count for every later tier here, even adjacent ones; so does this project.
- package: package_service.rb (paid units = units - free, packages rounded up, negative: 0). Same.
- percentage: percentage_service.rb: unchanged; the three documented departures are in
  billing_pipeline.pricing._percentage's docstring.
- bounds: app/services/validators/range_bounds_validator.rb: from_value = previous to_value or + 1
  (first: 0 or 1), to_value > from_value but for the open last tier. Difference fixed: adjacent
  bounds and a first tier from 1 were refused.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from billing_pipeline.money import to_minor
from billing_pipeline.pricing import (
    CHARGE_MODELS,
    TRUE_UP_KIND,
    Discount,
    LineInput,
    charge_amount,
    discount_applies,
    price_invoice,
    validate_charge,
)

D = Decimal


def tiers(*rows, price_key="per_unit_amount"):
    """rows: (from_value, to_value, price, flat_amount) -> the catalog's tier dicts (strings, as in YAML)."""
    return [
        {"from_value": f, "to_value": t, price_key: str(p), "flat_amount": str(flat)}
        for f, t, p, flat in rows
    ]


# --------------------------------------------------------------------------------------------------
# Worked examples from public documentation
# --------------------------------------------------------------------------------------------------

# https://getlago.com/docs/guide/plans/charges/charge-models/graduated
# "$1 per unit for the first 100 units, then $0.50 per unit for the next 100 calls and finally,
#  $0.10 for any additional unit."
LAGO_GRADUATED = {
    "model": "graduated",
    "tiers": tiers((0, 100, "1", 0), (101, 200, "0.50", 0), (201, None, "0.10", 0)),
}


@pytest.mark.parametrize(
    ("units", "amount"),
    [(0, "0"), (1, "1"), (100, "100"), (101, "100.50"), (200, "150"), (201, "150.10"), (250, "155")],
)
def test_lago_graduated_docs_example(units, amount):
    assert charge_amount(LAGO_GRADUATED, D(units)) == D(amount)


# https://getlago.com/docs/guide/plans/charges/charge-models/volume
# Tiers 0-10,000 $0.0010, 10,001-50,000 $0.0008, 50,001-100,000 $0.0006, 100,001+ $0.0004, each + $10.
# "65,000 API calls would cost 65,000 x $0.0006 + $10 = $49."
LAGO_VOLUME = {
    "model": "volume",
    "tiers": tiers(
        (0, 10000, "0.0010", 10),
        (10001, 50000, "0.0008", 10),
        (50001, 100000, "0.0006", 10),
        (100001, None, "0.0004", 10),
    ),
}


def test_lago_volume_docs_example():
    assert charge_amount(LAGO_VOLUME, D(65000)) == D("49")


# https://getlago.com/docs/guide/plans/charges/charge-models/package
# "$5 per 100 units and offer the first 100 units ... 201 units would cost $0 + $5 + $5 = $10."
LAGO_PACKAGE = {"model": "package", "package_size": 100, "amount": "5", "free_units": 100}


def test_lago_package_docs_example():
    assert charge_amount(LAGO_PACKAGE, D(201)) == D("10")


# https://getlago.com/docs/guide/plans/charges/charge-models/percentage
# Rate 1.2 %, fixed fee $0.10, "the first 3 events or $500 are free"; transactions $200, $100, $100
# are free; "for the fourth transaction, the charge will be $0.10 x 1 event + 1.2% of $50 = $0.70."
LAGO_PERCENTAGE = {
    "model": "percentage",
    "rate": "1.2",
    "fixed_amount": "0.10",
    "free_units_per_events": 3,
    "free_units_per_total_aggregation": "500",
}


def test_lago_percentage_docs_example():
    events = [D(200), D(100), D(100), D(50)]
    for n in (1, 2, 3):  # "No charges" after each of the first three transactions
        assert charge_amount(LAGO_PERCENTAGE, sum(events[:n]), events[:n]) == 0
    assert charge_amount(LAGO_PERCENTAGE, D(450), events) == D("0.70")


# https://getlago.com/docs/guide/plans/charges/charge-models/graduated-percentage
# Tiers 0-1,000 1 % + $200, 1,001-10,000 2 % + $300, 10,001+ 3 % + $400. Transactions of $500, $550,
# $4,000 cost $205, $306 and $80: the increments of the period amount.
LAGO_GRADUATED_PERCENTAGE = {
    "model": "graduated_percentage",
    "tiers": tiers((0, 1000, "1", 200), (1001, 10000, "2", 300), (10001, None, "3", 400), price_key="rate"),
}


def test_lago_graduated_percentage_docs_example():
    after_1 = charge_amount(LAGO_GRADUATED_PERCENTAGE, D(500))
    after_2 = charge_amount(LAGO_GRADUATED_PERCENTAGE, D(1050))
    after_3 = charge_amount(LAGO_GRADUATED_PERCENTAGE, D(5050))
    assert after_1 == D("205.00")
    assert after_2 - after_1 == D("306.00")
    assert after_3 - after_2 == D("80.00")


# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing
# Tiers: 1-5 fonts 7 USD, 6-10 6.5 USD, 11+ 6 USD (Lago bounds: [0, 5], [6, 10], [11, null]).
# Volume table on the page: 1 -> 7, 5 -> 35, 6 -> 39, 20 -> 120, 25 -> 150.
# Graduated: "5 fonts result in the same charge as volume-based pricing: 35 USD"; above that each
# tier's units at the tier's price, summed: 6 -> 41.50, 20 -> 127.50, 25 -> 157.50.
STRIPE_TIERS = tiers((0, 5, "7", 0), (6, 10, "6.5", 0), (11, None, "6", 0))


@pytest.mark.parametrize(("units", "amount"), [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")])
def test_stripe_volume_docs_example(units, amount):
    assert charge_amount({"model": "volume", "tiers": STRIPE_TIERS}, D(units)) == D(amount)


@pytest.mark.parametrize(
    ("units", "amount"), [(1, "7"), (5, "35"), (6, "41.50"), (20, "127.50"), (25, "157.50")]
)
def test_stripe_graduated_docs_example(units, amount):
    assert charge_amount({"model": "graduated", "tiers": STRIPE_TIERS}, D(units)) == D(amount)


# --------------------------------------------------------------------------------------------------
# Edge cases per model
# --------------------------------------------------------------------------------------------------


def test_standard():
    charge = {"model": "standard", "unit_amount": "0.000000000001"}  # fractions of a cent are normal
    assert charge_amount(charge, D(123456789)) == D("0.000123456789")
    assert charge_amount({"model": "standard", "unit_amount": "2.5"}, D("3.2")) == D("8")
    assert charge_amount({"model": "standard", "unit_amount": "2.5"}, D(0)) == 0


GRADUATED_FLAT = {
    "model": "graduated",
    "tiers": tiers((0, 100, "1", 10), (101, 200, "0.5", 20), (201, None, "0.1", 30)),
}


@pytest.mark.parametrize(
    ("units", "amount"),
    [
        ("0", "10"),  # zero units walk the first tier: its flat fee (Lago)
        ("1", "11"),  # entering tier 1: its flat fee
        ("100", "110"),  # exactly on the boundary: tier 2 not entered
        ("100.5", "130.25"),  # fractional units between 100 and 101 enter tier 2 (Lago: units - from + 1)
        ("101", "130.5"),  # first unit of tier 2 brings its flat fee
        ("200", "180"),
        ("201", "210.1"),
        ("1201", "310.1"),
    ],
)
def test_graduated_boundaries_and_flat_fees(units, amount):
    assert charge_amount(GRADUATED_FLAT, D(units)) == D(amount)


@pytest.mark.parametrize(
    ("units", "amount"),
    [
        ("0", "10"),  # zero units match the first tier: its flat fee (Lago)
        ("1", "10.001"),
        ("10000", "20"),  # upper bound of tier 1 is in tier 1
        ("10000.5", "18.0004"),  # Lago matches on ceil(units): 10001 -> tier 2
        ("10001", "18.0008"),  # one more unit costs less: volume is not monotonic
        ("100001", "50.0004"),
    ],
)
def test_volume_boundaries(units, amount):
    assert charge_amount(LAGO_VOLUME, D(units)) == D(amount)


def test_volume_is_not_monotonic():
    assert charge_amount(LAGO_VOLUME, D(10001)) < charge_amount(LAGO_VOLUME, D(10000))


@pytest.mark.parametrize(
    ("units", "amount"),
    [("0", "0"), ("100", "0"), ("100.5", "5"), ("101", "5"), ("200", "5"), ("200.5", "10"), ("400", "15")],
)
def test_package_free_units_and_round_up(units, amount):
    assert charge_amount(LAGO_PACKAGE, D(units)) == D(amount)


def test_package_without_free_units_charges_the_first_started_package():
    charge = {"model": "package", "package_size": "1000", "amount": "2"}
    assert charge_amount(charge, D(0)) == 0
    assert charge_amount(charge, D(1)) == D(2)
    assert charge_amount(charge, D(1000)) == D(2)
    assert charge_amount(charge, D(1001)) == D(4)


@pytest.mark.parametrize(
    ("params", "events", "amount"),
    [
        ({}, [], "0"),
        ({}, ["100", "50"], "2.00"),  # 1.2 % of 150 + 2 x 0.10
        ({"free_units_per_events": 2}, ["100", "50", "10"], "0.22"),  # only the third pays
        ({"free_units_per_events": 5}, ["100", "50", "10"], "0"),  # every event within the free count
        # free amount 120: 40 pays the rate; running total 100 < 120 is free of the fixed fee; 150, 160 pay it
        ({"free_units_per_total_aggregation": "120"}, ["100", "50", "10"], "0.68"),
        # running total exactly at the free amount: that transaction pays the fixed fee, no rate
        ({"free_units_per_total_aggregation": "150"}, ["100", "50", "10"], "0.32"),
        # the free amount runs out before the free events: the free period ends there (docs: "or")
        (
            {"free_units_per_events": 3, "free_units_per_total_aggregation": "250"},
            ["200", "100", "100", "50"],
            "2.70",
        ),
        ({"fixed_amount": None}, ["100"], "1.2"),  # an absent (null) fixed fee
    ],
)
def test_percentage_free_units(params, events, amount):
    charge = {"model": "percentage", "rate": "1.2", "fixed_amount": "0.10", **params}
    amounts = [D(e) for e in events]
    assert charge_amount(charge, sum(amounts, D(0)), amounts) == D(amount)


def test_percentage_zero_units_cost_zero_without_min():
    charge = {"model": "percentage", "rate": "1.2", "fixed_amount": "0.10"}
    assert charge_amount(charge, D(0), [D(0), D(0)]) == 0


@pytest.mark.parametrize(
    ("params", "events", "amount"),
    [
        (
            {"per_transaction_min_amount": "0.5", "per_transaction_max_amount": "2"},
            ["10", "100", "1000"],
            "3.5",
        ),
        ({"per_transaction_max_amount": "2"}, ["10", "1000"], "2.1"),
        ({"per_transaction_min_amount": "0.5"}, ["10", "1000"], "10.5"),
        # Lago charges the minimum even on a zero-amount transaction (units of zero do not cost zero)
        ({"per_transaction_min_amount": "0.5"}, ["0", "0"], "1.0"),
        # a free transaction is free: the minimum applies to paid ones only
        ({"per_transaction_min_amount": "0.5", "free_units_per_events": 1}, ["1000", "10"], "0.5"),
        # free amount 50 consumed by the first transaction (40) and part of the second (60 -> 50 pays)
        (
            {"per_transaction_min_amount": "0.1", "free_units_per_total_aggregation": "50"},
            ["40", "60"],
            "0.5",
        ),
    ],
)
def test_percentage_min_max_per_transaction(params, events, amount):
    charge = {"model": "percentage", "rate": "1", **params}
    amounts = [D(e) for e in events]
    assert charge_amount(charge, sum(amounts, D(0)), amounts) == D(amount)


def test_percentage_without_events_when_no_per_event_parameter():
    charge = {"model": "percentage", "rate": "2", "free_units_per_total_aggregation": "100"}
    assert charge_amount(charge, D(150)) == D("1")
    assert charge_amount(charge, D(80)) == 0


@pytest.mark.parametrize(
    "params",
    [
        {"fixed_amount": "0.1"},
        {"free_units_per_events": 1},
        {"per_transaction_min_amount": "1"},
        {"per_transaction_max_amount": "1"},
    ],
)
def test_percentage_needs_events_for_per_event_parameters(params):
    with pytest.raises(ValueError, match="event_amounts are required"):
        charge_amount({"model": "percentage", "rate": "1", **params}, D(10))


def test_percentage_events_must_sum_to_units():
    with pytest.raises(ValueError, match="sum to"):
        charge_amount({"model": "percentage", "rate": "1"}, D(10), [D(4), D(5)])


def test_percentage_min_above_max_is_refused():
    charge = {
        "model": "percentage",
        "rate": "1",
        "per_transaction_min_amount": "3",
        "per_transaction_max_amount": "2",
    }
    with pytest.raises(ValueError, match="min"):
        validate_charge(charge)


@pytest.mark.parametrize(
    ("units", "amount"), [("0", "200"), ("1000", "210"), ("1001", "510.02"), ("1000.5", "510.01")]
)
def test_graduated_percentage_boundaries(units, amount):
    assert charge_amount(LAGO_GRADUATED_PERCENTAGE, D(units)) == D(amount)


def test_graduated_percentage_flat_amount_is_optional():
    charge = {"model": "graduated_percentage", "tiers": [{"from_value": 0, "to_value": None, "rate": "2.5"}]}
    assert charge_amount(charge, D(200)) == D(5)


@pytest.mark.parametrize("value", ["2.5", 2, D("2.5000")])
def test_parameters_accept_str_int_and_decimal(value):
    expected = D(value) * 4 if not isinstance(value, str) else D("10")
    assert charge_amount({"model": "standard", "unit_amount": value}, D(4)) == expected


# --------------------------------------------------------------------------------------------------
# Refused input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charge", "units", "match"),
    [
        ({"model": "standard", "unit_amount": 0.1}, D(1), "float"),
        ({"model": "standard", "unit_amount": "1"}, 1.5, "float"),
        ({"model": "standard", "unit_amount": "NaN"}, D(1), "not a decimal"),
        ({"model": "standard", "unit_amount": True}, D(1), "boolean"),
        ({"model": "standard"}, D(1), "missing"),
        ({"model": "standard", "unit_price": "1"}, D(1), "unknown parameter"),
        ({"model": "standard", "unit_amount": "-1"}, D(1), ">= 0"),
        ({"model": "standard", "unit_amount": "1"}, D(-1), "units must be >= 0"),
        ({"model": "flat"}, D(1), "unknown charge model"),
        ({"unit_amount": "1"}, D(1), "unknown charge model"),
        ({"model": "package", "package_size": 0, "amount": "1"}, D(1), "package_size"),
        ({"model": "package", "package_size": "2.5", "amount": "1"}, D(1), "whole"),
        ({"model": "package", "package_size": 10, "amount": "1", "free_units": "0.5"}, D(1), "whole"),
        ({"model": "graduated", "tiers": []}, D(1), "non-empty"),
        ({"model": "graduated", "tiers": tiers((2, None, "1", 0))}, D(1), "from_value must be 0 .* or 1"),
        (
            {"model": "graduated", "tiers": tiers((0, 100, "1", 0), (99, None, "1", 0))},
            D(1),
            "from_value must be 100 .* or 101",
        ),
        (
            {"model": "graduated", "tiers": tiers((0, 100, "1", 0), (102, None, "1", 0))},
            D(1),
            "from_value must be 100 .* or 101",
        ),
        (
            {"model": "volume", "tiers": tiers((0, "0.5", "1", 0), ("0.6", None, "1", 0))},
            D(1),
            r"from_value must be 0.5 .* or 1.5",
        ),
        ({"model": "volume", "tiers": tiers((0, 100, "1", 0))}, D(1), "last tier"),
        ({"model": "volume", "tiers": tiers((0, None, "1", 0), (1, None, "1", 0))}, D(1), "to_value"),
        ({"model": "volume", "tiers": tiers((0, None, "-1", 0))}, D(1), ">= 0"),
        (
            {
                "model": "graduated",
                "tiers": [{"from_value": 0, "to_value": None, "per_unit_amount": "1", "x": 1}],
            },
            D(1),
            "unknown key",
        ),
        (
            {"model": "graduated_percentage", "tiers": [{"from_value": 0, "to_value": None}]},
            D(1),
            "rate are required",
        ),
        ({"model": "graduated_percentage", "tiers": tiers((0, None, "1", 0))}, D(1), "unknown key"),
    ],
)
def test_invalid_charges_are_refused(charge, units, match):
    with pytest.raises(ValueError, match=match):
        charge_amount(charge, units)


def test_validate_charge_accepts_every_documented_example():
    for charge in (
        LAGO_GRADUATED,
        LAGO_VOLUME,
        LAGO_PACKAGE,
        LAGO_PERCENTAGE,
        LAGO_GRADUATED_PERCENTAGE,
        {"model": "standard", "unit_amount": "0.01"},
    ):
        validate_charge(charge)
    assert set(CHARGE_MODELS) == {
        "standard",
        "graduated",
        "volume",
        "package",
        "percentage",
        "graduated_percentage",
    }


def test_negative_event_amounts_are_refused():
    with pytest.raises(ValueError, match="event_amounts"):
        charge_amount({"model": "percentage", "rate": "1"}, D(0), [D(5), D(-5)])


def test_inexact_arithmetic_is_an_error_not_a_silent_rounding():
    charge = {"model": "standard", "unit_amount": "1" + "1" * 40}
    with pytest.raises(ValueError, match="exactly"):
        charge_amount(charge, D("1." + "1" * 40))


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------

units_st = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False)
price_st = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw, price_key="per_unit_amount"):
    count = draw(st.integers(min_value=1, max_value=5))
    rows, start = [], 0
    for index in range(count):
        last = index == count - 1
        end = None if last else start + draw(st.integers(min_value=1, max_value=5000))
        rows.append(
            {
                "from_value": start,
                "to_value": end,
                price_key: str(draw(price_st)),
                "flat_amount": str(draw(price_st)),
            }
        )
        if end is not None:
            start = end + 1
    return rows


@st.composite
def monotonic_charges(draw):
    model = draw(st.sampled_from(["standard", "graduated", "package", "graduated_percentage"]))
    if model == "standard":
        return {"model": model, "unit_amount": str(draw(price_st))}
    if model == "package":
        return {
            "model": model,
            "package_size": draw(st.integers(1, 1000)),
            "amount": str(draw(price_st)),
            "free_units": draw(st.integers(0, 1000)),
        }
    return {
        "model": model,
        "tiers": draw(tier_lists("rate" if model == "graduated_percentage" else "per_unit_amount")),
    }


@given(monotonic_charges(), units_st, units_st)
def test_monotonic_non_decreasing_in_units(charge, a, b):
    low, high = min(a, b), max(a, b)
    assert charge_amount(charge, low) <= charge_amount(charge, high)


@given(tier_lists(), units_st)
def test_graduated_tiers_partition_the_units(rows, units):
    # With every per-unit price 1 and no flat fee, graduated pricing returns the units themselves:
    # every unit is priced in exactly one tier, none twice, none lost at a boundary.
    unit_rows = [{**row, "per_unit_amount": "1", "flat_amount": "0"} for row in rows]
    assert charge_amount({"model": "graduated", "tiers": unit_rows}, units) == units


@given(tier_lists(), units_st)
def test_volume_is_all_units_at_one_tier_price(rows, units):
    amount = charge_amount({"model": "volume", "tiers": rows}, units)
    candidates = {units * D(r["per_unit_amount"]) + D(r["flat_amount"]) for r in rows}
    assert amount in candidates


@given(tier_lists(), units_st, units_st)
def test_volume_is_monotonic_when_prices_and_fees_do_not_fall(rows, a, b):
    # What is true of volume: with tier prices and flat fees non-decreasing from tier to tier, more
    # units never cost less (in general they can: see test_volume_is_not_monotonic).
    prices = sorted(D(r["per_unit_amount"]) for r in rows)
    flats = sorted(D(r["flat_amount"]) for r in rows)
    rising = [
        {**r, "per_unit_amount": str(p), "flat_amount": str(f)}
        for r, p, f in zip(rows, prices, flats, strict=True)
    ]
    low, high = min(a, b), max(a, b)
    charge = {"model": "volume", "tiers": rising}
    assert charge_amount(charge, low) <= charge_amount(charge, high)


def lago_percentage_reference(rate, fixed, free_events, free_amount, events):
    """Lago's non-min/max formula, transcribed from percentage_service.rb (compute_percentage_amount,
    compute_fixed_amount, free_units_value, free_units_count), for cross-checking."""
    units = sum(events, D(0))
    running = []
    for e in events:
        running.append((running[-1] if running else D(0)) + e)
    has_running = free_events > 0 or free_amount > 0
    last = running[-1] if (has_running and running) else D(0)
    if last == 0:
        free_value = D(0)
    elif free_events > 0 and free_events < len(running):
        free_value = running[free_events - 1]
    elif free_amount == 0 or last <= free_amount:
        free_value = last
    else:
        free_value = free_amount
    percentage = D(0) if free_value > units else (units - free_value) * rate / 100
    counts = [c for c in (free_events, sum(1 for r in running if r < free_amount) if has_running else 0) if c]
    free_count = min(counts) if counts else 0
    fixed_part = D(0) if units == 0 or free_count >= len(events) else (len(events) - free_count) * fixed
    return percentage + fixed_part


event_st = st.lists(
    st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False), max_size=8
)


@given(price_st, price_st, st.integers(0, 6), st.decimals(min_value=0, max_value=3000, places=2), event_st)
def test_percentage_equals_lagos_formula_where_lago_follows_its_docs(
    rate, fixed, free_events, free_amount, events
):
    running = [sum(events[: i + 1], D(0)) for i in range(len(events))]
    if free_events and free_amount:
        # Outside these, Lago's code departs from its documented "N events or A amount" rule (see pricing.py).
        assume(free_events >= len(events) or running[free_events - 1] <= free_amount)
        assume(any(r < free_amount for r in running))
    charge = {
        "model": "percentage",
        "rate": str(rate),
        "fixed_amount": str(fixed),
        "free_units_per_events": free_events,
        "free_units_per_total_aggregation": str(free_amount),
    }
    expected = lago_percentage_reference(rate, fixed, free_events, free_amount, events)
    assert charge_amount(charge, sum(events, D(0)), events) == expected


@given(
    price_st,
    price_st,
    st.integers(0, 6),
    st.decimals(min_value=0, max_value=3000, places=2),
    event_st,
    st.decimals(min_value=0, max_value=1000, places=2),
    st.booleans(),
    st.booleans(),
)
def test_percentage_never_decreases_when_a_transaction_is_added(
    rate, fixed, free_events, free_amount, events, extra, with_min, with_max
):
    charge = {
        "model": "percentage",
        "rate": str(rate),
        "fixed_amount": str(fixed),
        "free_units_per_events": free_events,
        "free_units_per_total_aggregation": str(free_amount),
    }
    if with_min:
        charge["per_transaction_min_amount"] = "0.5"
    if with_max:
        charge["per_transaction_max_amount"] = "5"
    before = charge_amount(charge, sum(events, D(0)), events)
    after = charge_amount(charge, sum(events, D(0)) + extra, [*events, extra])
    assert after >= before


# --------------------------------------------------------------------------------------------------
# Invoice level
# --------------------------------------------------------------------------------------------------

JAN = {"period_start": date(2024, 1, 1), "period_end": date(2024, 2, 1)}


def invoice(lines, **overrides):
    kwargs = {
        "currency": "USD",
        "minimum_commitment": None,
        "tax_rate": D(0),
        "discounts": (),
        "credits_available_minor": 0,
        **JAN,
        **overrides,
    }
    return price_invoice(lines, **kwargs)


def test_invoice_order_of_operations_worked_example():
    result = invoice(
        [LineInput("api_calls", D("10.005")), LineInput("storage", D("3.333"))],
        minimum_commitment=D("20"),
        tax_rate=D("0.2"),
        discounts=[Discount("TEN", "percentage", D("10"), date(2023, 12, 1))],
        credits_available_minor=500,
    )
    assert [(line.key, line.amount_minor) for line in result.lines] == [
        ("api_calls", 1001),  # 10.005 rounds half-up once, per line
        ("storage", 333),
        (TRUE_UP_KIND, 666),  # 20.00 - 13.34
    ]
    assert result.usage_subtotal_minor == 1334
    assert result.commitment_true_up_minor == 666
    assert result.subtotal_minor == 2000
    assert result.discount_minor == 200
    assert result.tax_minor == 360  # 20 % of 18.00
    assert result.credits_applied_minor == 500
    assert result.total_minor == 1660


@pytest.mark.parametrize(
    ("currency", "amount", "minor"),
    [("USD", "0.125", 13), ("JPY", "100.5", 101), ("KWD", "1.2345", 1235), ("JPY", "100.49", 100)],
)
def test_invoice_rounds_each_line_to_the_currency(currency, amount, minor):
    result = invoice([LineInput("x", D(amount))], currency=currency)
    assert result.lines[0].amount_minor == minor
    assert result.total_minor == minor


def test_lines_are_rounded_once_each_not_summed_then_rounded():
    # three lines of 0.005: each rounds to 1 cent (3 cents), the unrounded sum 0.015 would give 2
    result = invoice([LineInput(k, D("0.005")) for k in "abc"])
    assert result.subtotal_minor == 3


def test_tax_rounds_half_up():
    assert invoice([LineInput("x", D("0.01"))], tax_rate=D("0.5")).tax_minor == 1  # 0.005 -> 0.01


def test_no_true_up_when_usage_reaches_the_commitment():
    result = invoice([LineInput("x", D("20.00"))], minimum_commitment=D("20"))
    assert result.commitment_true_up_minor == 0
    assert [line.kind for line in result.lines] == ["usage"]


def test_late_usage_is_billed_but_does_not_count_toward_the_commitment():
    result = invoice(
        [LineInput("x", D("5")), LineInput("x@2023-12", D("30"), kind="late_usage")],
        minimum_commitment=D("20"),
    )
    assert result.usage_subtotal_minor == 500
    assert result.commitment_true_up_minor == 1500
    assert result.subtotal_minor == 500 + 3000 + 1500


def test_commitment_with_no_usage_at_all():
    result = invoice([], minimum_commitment=D("49.99"), currency="USD")
    assert result.subtotal_minor == 4999
    assert result.lines[0].kind == TRUE_UP_KIND


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "applies"),
    [
        (date(2024, 1, 31), None, True),  # starts on the period's last day
        (date(2024, 2, 1), None, False),  # starts on period_end (exclusive)
        (date(2023, 1, 1), date(2024, 1, 1), True),  # ends on the period's first day (valid_to inclusive)
        (date(2023, 1, 1), date(2023, 12, 31), False),  # ended the day before
        (date(2023, 1, 1), None, True),
        (date(2024, 1, 10), date(2024, 1, 12), True),  # inside the period
    ],
)
def test_discount_validity_window(valid_from, valid_to, applies):
    discount = Discount("D", "fixed", D("1"), valid_from, valid_to)
    assert discount_applies(discount, JAN["period_start"], JAN["period_end"]) is applies
    result = invoice([LineInput("x", D("10"))], discounts=[discount])
    assert result.discount_minor == (100 if applies else 0)
    assert [d.code for d in result.discounts] == (["D"] if applies else [])


def test_discount_never_exceeds_the_subtotal():
    result = invoice(
        [LineInput("x", D("10"))],
        discounts=[Discount("BIG", "fixed", D("25"), date(2024, 1, 1))],
        tax_rate=D("0.2"),
        credits_available_minor=300,
    )
    assert result.discount_minor == 1000
    assert result.tax_minor == 0
    assert result.credits_applied_minor == 0
    assert result.total_minor == 0


def test_fixed_discounts_apply_before_percentages_whatever_the_input_order():
    pct = Discount("PCT", "percentage", D("10"), date(2024, 1, 1))
    fixed = Discount("FIX", "fixed", D("10"), date(2024, 1, 1))
    for order in ([pct, fixed], [fixed, pct]):
        result = invoice([LineInput("x", D("100"))], discounts=order)
        assert [(d.code, d.amount_minor) for d in result.discounts] == [("FIX", 1000), ("PCT", 900)]
        assert result.discount_minor == 1900


def test_credits_cover_at_most_the_amount_due():
    result = invoice([LineInput("x", D("10"))], tax_rate=D("0.1"), credits_available_minor=5000)
    assert result.credits_applied_minor == 1100
    assert result.total_minor == 0


def test_discount_from_mapping():
    discount = Discount.from_mapping(
        {"code": "LAUNCH", "kind": "percentage", "value": "15", "valid_from": "2024-01-01", "valid_to": None}
    )
    assert discount == Discount("LAUNCH", "percentage", D("15"), date(2024, 1, 1), None)
    with pytest.raises(ValueError, match="float"):
        Discount.from_mapping({"code": "X", "kind": "fixed", "value": 1.5, "valid_from": "2024-01-01"})


@pytest.mark.parametrize(
    ("lines", "overrides", "match"),
    [
        ([LineInput("x", D("-1"))], {}, "amount must be >= 0"),
        ([LineInput("x", 1.5)], {}, "float"),
        ([LineInput("x", D(1)), LineInput("x", D(2))], {}, "duplicate"),
        ([LineInput("x", D(1), kind="bonus")], {}, "kind"),
        ([], {"tax_rate": D("20")}, "fraction"),
        ([], {"tax_rate": 0.2}, "float"),
        ([], {"currency": "usd"}, "currency"),
        ([], {"credits_available_minor": -1}, ">= 0"),
        ([], {"credits_available_minor": D(1)}, "int"),
        ([], {"minimum_commitment": D("-1")}, ">= 0"),
        ([], {"period_end": date(2024, 1, 1)}, "exclusive"),
        ([], {"period_start": datetime(2024, 1, 1)}, "datetime"),
        ([], {"discounts": [Discount("X", "bogus", D(1), date(2024, 1, 1))]}, "kind"),
        ([], {"discounts": [Discount("X", "percentage", D(101), date(2024, 1, 1))]}, "out of range"),
        ([], {"discounts": [Discount("X", "fixed", D(1), date(2024, 1, 2), date(2024, 1, 1))]}, "before"),
    ],
)
def test_invoice_refuses_bad_input(lines, overrides, match):
    with pytest.raises(ValueError, match=match):
        invoice(lines, **overrides)


discount_st = st.builds(
    Discount,
    code=st.sampled_from(["A", "B", "C", "D"]),
    kind=st.sampled_from(["fixed", "percentage"]),
    value=st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False),
    valid_from=st.dates(min_value=date(2023, 6, 1), max_value=date(2024, 6, 1)),
    valid_to=st.none() | st.dates(min_value=date(2024, 6, 2), max_value=date(2025, 1, 1)),
)


@settings(max_examples=300)
@given(
    amounts=st.lists(
        st.decimals(min_value=0, max_value=10**7, places=6, allow_nan=False, allow_infinity=False), max_size=6
    ),
    currency=st.sampled_from(["USD", "JPY", "KWD", "EUR"]),
    commitment=st.none()
    | st.decimals(min_value=0, max_value=10**5, places=2, allow_nan=False, allow_infinity=False),
    tax_rate=st.decimals(
        min_value=0, max_value=D("0.999999"), places=6, allow_nan=False, allow_infinity=False
    ),
    discounts=st.lists(discount_st, max_size=4),
    credits=st.integers(min_value=0, max_value=10**12),
    start=st.dates(min_value=date(2023, 1, 1), max_value=date(2025, 1, 1)),
    days=st.integers(min_value=1, max_value=62),
)
def test_invoice_identity_holds_for_random_inputs(
    amounts, currency, commitment, tax_rate, discounts, credits, start, days
):
    lines = [LineInput(f"l{i}", a) for i, a in enumerate(amounts)]
    result = price_invoice(
        lines,
        currency=currency,
        minimum_commitment=commitment,
        tax_rate=tax_rate,
        discounts=discounts,
        period_start=start,
        period_end=start + timedelta(days=days),
        credits_available_minor=credits,
    )
    assert result.total_minor == (
        result.subtotal_minor - result.discount_minor + result.tax_minor - result.credits_applied_minor
    )
    assert result.total_minor >= 0
    assert 0 <= result.discount_minor <= result.subtotal_minor
    assert result.discount_minor == sum(d.amount_minor for d in result.discounts)
    assert 0 <= result.credits_applied_minor <= credits
    assert result.subtotal_minor == sum(line.amount_minor for line in result.lines)
    for line, amount in zip(result.lines[: len(amounts)], amounts, strict=True):
        assert line.amount_minor == to_minor(amount, currency)
    assert result.tax_minor == to_minor(
        tax_rate
        * (result.subtotal_minor - result.discount_minor)
        / D(10) ** {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}[currency],
        currency,
    )
    if commitment is not None:
        assert result.usage_subtotal_minor + result.commitment_true_up_minor >= to_minor(commitment, currency)
    if credits < result.subtotal_minor - result.discount_minor + result.tax_minor:
        assert result.credits_applied_minor == credits  # credits are used up before anything is left due
    for value in (
        result.subtotal_minor,
        result.discount_minor,
        result.tax_minor,
        result.credits_applied_minor,
        result.total_minor,
    ):
        assert type(value) is int


# --------------------------------------------------------------------------------------------------
# Lago's specs, case by case (spec/services/charge_models/*_spec.rb in getlago/lago-api)
# --------------------------------------------------------------------------------------------------

LAGO_SPEC_GRADUATED = {"model": "graduated", "tiers": tiers((0, 10, "10", "2"), (11, 20, "5", "3"), (21, None, "5", "3"))}
LAGO_SPEC_GRADUATED_DECIMAL_FIRST = {
    "model": "graduated", "tiers": tiers((0, "0.01", "0", "0"), ("0.01", 10, "10", "2"), (11, None, "5", "3"))
}
LAGO_SPEC_GRADUATED_ADJACENT = {
    "model": "graduated", "tiers": tiers((0, "0.1", "10", "0"), ("0.1", 1, "5", "0"), (1, None, "2", "0"))
}
LAGO_SPEC_VOLUME = {"model": "volume", "tiers": tiers((0, 100, "2", "10"), (101, 200, "1", "0"), (201, None, "0.5", "50"))}
LAGO_SPEC_VOLUME_ZERO_FIRST = {"model": "volume", "tiers": tiers((0, 1, "0", "0"), (2, 100, "2", "10"), (101, None, "0.5", "50"))}
LAGO_SPEC_GRADUATED_PERCENTAGE = {
    "model": "graduated_percentage",
    "tiers": tiers((0, 10, "1", "200"), (11, 20, "2", "300"), (21, None, "3", "400"), price_key="rate"),
}
LAGO_SPEC_GRADUATED_PERCENTAGE_DECIMAL_FIRST = {
    "model": "graduated_percentage",
    "tiers": tiers((0, "0.01", "0", "0"), ("0.01", 10, "1", "200"), (11, None, "2", "300"), price_key="rate"),
}


@pytest.mark.parametrize(
    ("charge", "units", "amount"),
    [
        (LAGO_SPEC_GRADUATED, "0", "2"),  # "applies the flat amount from the first tier"
        (LAGO_SPEC_GRADUATED_DECIMAL_FIRST, "0", "0"),  # "when first tier flat amount is zero"
        (LAGO_SPEC_GRADUATED, "1", "12"),
        (LAGO_SPEC_GRADUATED, "10", "102"),
        (LAGO_SPEC_GRADUATED, "11", "110"),
        (LAGO_SPEC_GRADUATED, "12", "115"),
        (LAGO_SPEC_GRADUATED, "21", "163"),
        (LAGO_SPEC_GRADUATED_ADJACENT, "0.05", "0.5"),  # "with decimal adjacent ranges"
        (LAGO_SPEC_GRADUATED_ADJACENT, "0.5", "3.0"),  # 0.1 x 10 + 0.4 x 5
        (LAGO_SPEC_GRADUATED_ADJACENT, "3", "9.5"),  # 0.1 x 10 + 0.9 x 5 + 2 x 2
        (LAGO_SPEC_VOLUME, "0", "10"),
        (LAGO_SPEC_VOLUME_ZERO_FIRST, "0", "0"),
        (LAGO_SPEC_VOLUME, "1", "12"),
        (LAGO_SPEC_VOLUME, "100", "210"),
        (LAGO_SPEC_VOLUME, "100.5", "100.5"),
        (LAGO_SPEC_VOLUME, "101", "101"),
        (LAGO_SPEC_VOLUME, "200", "200"),
        (LAGO_SPEC_VOLUME, "300", "200"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "0", "200"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE_DECIMAL_FIRST, "0", "0"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "1", "200.01"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "10", "200.1"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "11", "500.12"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "12", "500.14"),
        (LAGO_SPEC_GRADUATED_PERCENTAGE, "21", "900.33"),
    ],
)
def test_lago_spec_cases(charge, units, amount):
    assert charge_amount(charge, D(units)) == D(amount)


def test_adjacent_decimal_volume_tiers_match_by_their_upper_bound():
    charge = {"model": "volume", "tiers": tiers((0, "0.1", "10", "0"), ("0.1", 1, "5", "1"), (1, None, "2", "0"))}
    assert charge_amount(charge, D("0.1")) == D("1.0")  # 0.1 <= 0.1: the first tier
    assert charge_amount(charge, D("0.5")) == D("3.5")  # 0.5 x 5 + 1
    assert charge_amount(charge, D("1.5")) == D("3.0")


def test_a_catalog_may_price_a_fractional_metric_in_adjacent_tiers():
    validate_charge(LAGO_SPEC_GRADUATED_ADJACENT)  # refused before: "from_value must be previous to_value + 1"
    validate_charge({"model": "graduated", "tiers": tiers((1, 10, "1", 0), (11, None, "1", 0))})  # Lago: 0 or 1
