"""The money module: exponents from ISO 4217 (the iso4217 package), exact integer formatting and parsing."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from iso4217 import Currency

from domain import money
from domain.errors import InvalidOrder
from domain.model import Money
from reactors.loyalty.reactor import points_for

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# The API's bounds (api/schemas.py): a unit price up to 10**12 minor units, 1,000 units a line, 50 lines.
LARGEST_ORDER_TOTAL = 10**12 * 1_000 * 50
SUPPORTED = sorted(money.supported_currencies())


def test_every_iso_4217_currency_with_a_minor_unit_is_supported_with_its_published_exponent() -> None:
    published = {currency.code: currency.exponent for currency in Currency}
    assert set(SUPPORTED) == {code for code, digits in published.items() if digits is not None}
    assert {code: money.exponent(code) for code in SUPPORTED} == {
        code: digits for code, digits in published.items() if digits is not None
    }
    # Each exponent the standard uses today is there, including the 4-decimal unidades de fomento.
    assert {money.exponent(code) for code in SUPPORTED} == {0, 2, 3, 4}


@pytest.mark.parametrize(
    ("minor_units", "currency", "text"),
    [
        (1_500, "JPY", "1500 JPY"),
        (1_500, "KWD", "1.500 KWD"),
        (1_500, "EUR", "15.00 EUR"),
        (1_500, "CLF", "0.1500 CLF"),
        (123_456, "UYW", "12.3456 UYW"),
        (0, "EUR", "0.00 EUR"),
        (5, "BHD", "0.005 BHD"),
        (-1_500, "JPY", "-1500 JPY"),
        (-1_500, "KWD", "-1.500 KWD"),
        (-5, "EUR", "-0.05 EUR"),
        (2**53 + 1, "EUR", "90071992547409.93 EUR"),  # a float would print ...409.92
        (LARGEST_ORDER_TOTAL + 1, "KWD", "50000000000000.001 KWD"),
        (10**30 + 7, "USD", "10000000000000000000000000000.07 USD"),
    ],
)
def test_format_and_parse(minor_units: int, currency: str, text: str) -> None:
    assert money.format_amount(minor_units, currency) == text
    assert str(Money(minor_units, currency)) == text
    assert money.parse_amount(text) == Money(minor_units, currency)


@given(
    amount=st.one_of(
        st.integers(min_value=-LARGEST_ORDER_TOTAL, max_value=LARGEST_ORDER_TOTAL),
        st.integers(min_value=-(10**40), max_value=10**40),
    )
)
def test_formatting_then_parsing_gives_the_integer_back_in_every_currency(amount: int) -> None:
    for currency in SUPPORTED:
        text = money.format_amount(amount, currency)
        assert money.parse_amount(text) == Money(amount, currency), text
        whole, _, fraction = text.split(" ")[0].lstrip("-").partition(".")
        assert len(fraction) == money.exponent(currency)
        exact = money.to_decimal(amount, currency)
        assert exact == Decimal(text.split(" ")[0]) and exact.as_tuple().exponent == -money.exponent(currency)
        assert int(whole) == abs(money.whole_units(amount, currency))


@pytest.mark.parametrize("code", ["XXX", "XAU", "XAG", "XDR", "XTS", "ABC", "EURO", "eur", ""])
def test_a_currency_without_a_minor_unit_or_unknown_is_refused(code: str) -> None:
    with pytest.raises(money.UnsupportedCurrency):
        money.exponent(code)
    with pytest.raises(money.UnsupportedCurrency):
        money.format_amount(100, code)
    with pytest.raises(InvalidOrder):
        Money(100, code)


@pytest.mark.parametrize("amount", [15.0, 1.5, True, "1500"])
def test_an_amount_is_an_int_never_a_float(amount: object) -> None:
    with pytest.raises(TypeError):
        money.format_amount(amount, "EUR")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(amount, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["15 EUR", "15.0 EUR", "15.000 EUR", "1500.0 JPY", "1.50 KWD", "1,500 JPY", "15.00"]
)
def test_parsing_wants_exactly_the_currency_s_decimals(text: str) -> None:
    with pytest.raises(ValueError):
        money.parse_amount(text)


@pytest.mark.parametrize(
    ("minor_units", "currency", "points"),
    [
        (1_500, "JPY", 1_500),
        (1_500, "KWD", 1),
        (1_999, "EUR", 19),
        (1_500, "CLF", 0),
        (123_456, "UYW", 12),
        (999, "BHD", 0),
        (1_000, "ISK", 1_000),
    ],
)
def test_loyalty_points_come_from_the_iso_exponent(minor_units: int, currency: str, points: int) -> None:
    assert points_for(minor_units, currency) == points


def test_loyalty_credits_one_point_per_whole_unit_in_every_currency() -> None:
    for currency in SUPPORTED:
        unit = 10 ** money.exponent(currency)
        assert points_for(7 * unit + unit - 1, currency) == 7, currency  # the largest amount under 8 units


# Money computed or printed with a float, or a divisor of 100 (two decimals assumed). Dimensionless
# formatting of durations and loads lives outside these packages.
MONEY_PACKAGES = ("domain", "contracts", "activities", "orchestrator", "api", "reactors", "ops")
SUSPECT = re.compile(r"/ ?100\b|\*\s*100\b|:[<>^]?\d*\.2f|\bfloat\(")


def test_no_float_or_hundredth_in_the_code_that_handles_money() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in MONEY_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SUSPECT.search(line)
    ]
    assert found == []
