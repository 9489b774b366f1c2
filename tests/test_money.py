"""Money: ISO 4217 exponents, one half-up rounding to minor units, exact parsing, floats refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.money import (
    MINOR_UNIT_EXPONENTS,
    from_minor,
    is_valid_currency,
    minor_unit_exponent,
    parse_decimal,
    to_minor,
)

D = Decimal


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("INR", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("OMR", 3),
    ],
)
def test_iso_4217_exponents(currency, exponent):
    assert minor_unit_exponent(currency) == exponent
    assert is_valid_currency(currency)


@pytest.mark.parametrize("code", ["usd", "XXX", "US", "USDD", "", None, 840, b"USD"])
def test_invalid_currencies(code):
    assert not is_valid_currency(code)
    with pytest.raises(ValueError):
        minor_unit_exponent(code)


def test_lower_case_code_gets_a_hint():
    with pytest.raises(ValueError, match="upper case"):
        to_minor(D("1"), "usd")


def test_table_holds_only_upper_case_codes_with_known_exponents():
    assert len(MINOR_UNIT_EXPONENTS) >= 40
    for code, exponent in MINOR_UNIT_EXPONENTS.items():
        assert len(code) == 3 and code.isalpha() and code.isupper()
        assert exponent in (0, 2, 3)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        # USD: 2 decimals, half-up at the third.
        ("12.345", "USD", 1235),
        ("12.344", "USD", 1234),
        ("12.3449999", "USD", 1234),
        ("0.005", "USD", 1),
        ("0.004999", "USD", 0),
        ("-0.005", "USD", -1),  # ties go away from zero
        ("0", "USD", 0),
        ("1e2", "USD", 10000),
        ("12345678901234567890.125", "USD", 1234567890123456789013),
        # JPY: no minor unit.
        ("0.5", "JPY", 1),
        ("1.49", "JPY", 1),
        ("1234.5", "JPY", 1235),
        ("1234", "JPY", 1234),
        # KWD: 3 decimals.
        ("1.2345", "KWD", 1235),
        ("1.2344", "KWD", 1234),
        ("0.0005", "KWD", 1),
        ("7", "KWD", 7000),
    ],
)
def test_to_minor_rounds_half_up_per_currency(amount, currency, minor):
    result = to_minor(D(amount), currency)
    assert result == minor
    assert type(result) is int


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1235, "USD", "12.35"),
        (5, "USD", "0.05"),
        (0, "USD", "0.00"),
        (1235, "JPY", "1235"),
        (1235, "KWD", "1.235"),
        (-250, "EUR", "-2.50"),
    ],
)
def test_from_minor(minor, currency, text):
    value = from_minor(minor, currency)
    assert isinstance(value, Decimal)
    assert str(value) == text


@pytest.mark.parametrize("bad", [12.5, D("12"), True, "12"])
def test_from_minor_needs_an_int(bad):
    with pytest.raises(ValueError):
        from_minor(bad, "USD")


@given(
    st.integers(min_value=-(10**18), max_value=10**18), st.sampled_from(["USD", "JPY", "KWD", "EUR", "BHD"])
)
def test_minor_round_trip(minor, currency):
    assert to_minor(from_minor(minor, currency), currency) == minor


@given(
    st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_to_minor_is_the_nearest_minor_unit_with_ties_away_from_zero(amount, currency):
    scaled = amount.scaleb(minor_unit_exponent(currency))
    minor = to_minor(amount, currency)
    error = abs(D(minor) - scaled)
    assert error <= D("0.5")
    if error == D("0.5"):  # a tie: rounded away from zero
        assert abs(D(minor)) > abs(scaled)


@pytest.mark.parametrize("value", [0.1, 1.0, float("nan"), float("inf")])
def test_floats_are_refused(value):
    with pytest.raises(ValueError, match="float"):
        parse_decimal(value)
    with pytest.raises(ValueError, match="float"):
        to_minor(value, "USD")


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        "  ",
        "abc",
        "1_000",
        "1,5",
        "1.2.3",
        "0x10",
        "--1",
        D("NaN"),
        D("Infinity"),
        D("-Infinity"),
        True,
        None,
        [1],
    ],
)
def test_non_numbers_are_refused(text):
    with pytest.raises(ValueError):
        parse_decimal(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (" 12.50 ", D("12.50")),
        ("1e3", D("1000")),
        ("-0.000000000001", D("-1e-12")),
        (".5", D("0.5")),
        ("+7", D(7)),
        (5, D(5)),
        (D("0.1"), D("0.1")),
    ],
)
def test_parse_decimal_is_exact(text, value):
    parsed = parse_decimal(text)
    assert isinstance(parsed, Decimal)
    assert parsed == value


def test_parse_decimal_keeps_the_written_scale():
    assert str(parse_decimal("12.50")) == "12.50"
    assert parse_decimal("0.1") + parse_decimal("0.2") == D("0.3")
