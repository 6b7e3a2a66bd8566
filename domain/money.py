"""Money: integer minor units of an ISO 4217 currency, and the one place that knows each currency's exponent.

Every amount in the service is an `int` of minor units (1500 JPY is 1500 yen, 1500 KWD is 1.500 dinar, 1500
EUR is 15.00 euro). The exponent of each currency (0 for JPY, 2 for EUR, 3 for KWD, 4 for CLF and UYW) comes
from the ISO 4217 list as published by its maintenance agency, shipped by the `iso4217` package (its
`table.xml`), never from a table kept here. Codes the list has without a minor unit (`XXX`, `XAU`, `XDR`,
the funds and test codes: "N.A.") and codes it does not have are refused with `UnsupportedCurrency`.

Formatting and parsing are integer arithmetic only (`divmod` by a power of ten): exact at any size, where a
float would round amounts above 2**53 minor units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from iso4217 import Currency

from domain.errors import CurrencyMismatch, InvalidOrder

_CODE = re.compile(r"[A-Z]{3}")
_AMOUNT = re.compile(r"(?P<sign>-?)(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))? (?P<currency>[A-Z]{3})")


class UnsupportedCurrency(InvalidOrder):
    """A currency the service cannot hold amounts in: not in ISO 4217, or without a minor unit there."""

    code = "UNSUPPORTED_CURRENCY"


@cache
def _exponents() -> dict[str, int | None]:
    # Built on first use, not at import: the code -> exponent (None: "N.A.", no minor unit) of every entry.
    return {currency.code: currency.exponent for currency in Currency}


def exponent(currency: str) -> int:
    """`exponent(currency: str) -> int`: the number of decimals of the currency's minor unit (JPY 0,
    EUR 2, KWD 3, CLF 4), from ISO 4217.

    Raises UnsupportedCurrency for a code ISO 4217 does not list, or lists without a minor unit
    (`XXX`, `XAU`, `XDR`...: amounts in minor units mean nothing there).
    """
    exponents = _exponents()
    if currency not in exponents:
        raise UnsupportedCurrency(f"not an ISO 4217 currency code: {currency}")
    digits = exponents[currency]
    if digits is None:
        raise UnsupportedCurrency(
            f"{currency} has no minor unit in ISO 4217 (a fund, precious metal or test code): "
            "amounts cannot be given in it"
        )
    return digits


def supported_currencies() -> frozenset[str]:
    """Every code `exponent` accepts: the ISO 4217 currencies that have a minor unit."""
    return frozenset(code for code, digits in _exponents().items() if digits is not None)


def format_amount(minor_units: int, currency: str) -> str:
    """`format_amount(1500, "KWD") -> "1.500 KWD"`: the amount in major units with exactly the currency's
    decimals, then the code (1500 JPY -> "1500 JPY", -1500 EUR -> "-15.00 EUR"). No grouping separators.

    Integer arithmetic only, exact at any size. Raises UnsupportedCurrency (see `exponent`) and TypeError
    for an amount that is not an int.
    """
    _check_int(minor_units)
    digits = exponent(currency)
    sign = "-" if minor_units < 0 else ""
    whole, fraction = divmod(abs(minor_units), 10**digits)
    if digits == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{digits}d} {currency}"


def parse_amount(text: str) -> Money:
    """The inverse of `format_amount`: `"1.500 KWD"` -> `Money(1500, "KWD")`.

    Strict: exactly the currency's decimals (none for an exponent-0 currency), an optional leading `-`,
    no grouping separators. Raises ValueError for any other text, UnsupportedCurrency for the currency.
    """
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise ValueError(f"not an amount: {text!r}")
    currency = match["currency"]
    digits = exponent(currency)
    fraction = match["fraction"] or ""
    if len(fraction) != digits:
        raise ValueError(f"{currency} amounts have {digits} decimal(s): {text!r}")
    magnitude = int(match["whole"]) * 10**digits + (int(fraction) if fraction else 0)
    return Money(-magnitude if match["sign"] else magnitude, currency)


def to_decimal(minor_units: int, currency: str) -> Decimal:
    """The amount in major units, exact at any size: `to_decimal(1500, "KWD") == Decimal("1.500")`."""
    _check_int(minor_units)
    # Built from its digits: Decimal arithmetic (scaleb, division) would round to the context's precision.
    sign, digits, _ = Decimal(minor_units).as_tuple()
    return Decimal((sign, digits, -exponent(currency)))


def whole_units(minor_units: int, currency: str) -> int:
    """Whole major units in an amount, the fraction dropped (towards zero): 1999 EUR -> 19, 1500 KWD -> 1."""
    _check_int(minor_units)
    unit: int = 10 ** exponent(currency)
    whole = abs(minor_units) // unit
    return -whole if minor_units < 0 else whole


def _check_int(minor_units: object) -> None:
    # bool is an int subclass, float is not: neither is an amount of minor units.
    if not isinstance(minor_units, int) or isinstance(minor_units, bool):
        raise TypeError(f"an amount is an int of minor units, got {type(minor_units).__name__}")


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of an ISO 4217 currency (see `exponent`).

    Raises InvalidOrder for a malformed code, UnsupportedCurrency (an InvalidOrder) for one ISO 4217 does
    not list with a minor unit, TypeError for an amount that is not an int.
    """

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if not _CODE.fullmatch(self.currency):
            raise InvalidOrder(f"currency must be an ISO 4217 code, got {self.currency!r}")
        _check_int(self.amount)
        exponent(self.currency)

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def times(self, quantity: int) -> Money:
        return Money(self.amount * quantity, self.currency)

    def __str__(self) -> str:
        return format_amount(self.amount, self.currency)
