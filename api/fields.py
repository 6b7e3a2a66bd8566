"""The API's field types and limits: constrained strings, codes and amounts its request models share."""

from __future__ import annotations

from typing import Annotated

import email_validator
from pydantic import (
    AfterValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from api.iso_codes import country_codes
from domain import money

MAX_LINES = 50
MAX_QUANTITY = 1_000
MAX_UNIT_PRICE = 10**12
# Stock levels stay well inside the 32-bit columns that hold them.
MAX_STOCK = 1_000_000_000
SKU_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,63}$"
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
# Free text: no control characters (PostgreSQL cannot store NUL, and none belong in an address).
PRINTABLE_TEXT = r"^[^\x00-\x1F\x7F]+$"
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"


def _known_country(code: str) -> str:
    if code not in country_codes():
        raise PydanticCustomError(
            "country_code", "not an ISO 3166-1 alpha-2 country code: {code}", {"code": code}
        )
    return code


def _known_currency(code: str) -> str:
    # The money module decides: ISO 4217 codes with a minor unit (not XXX, XAU...), so that every amount
    # accepted here can be formatted and converted later.
    try:
        money.exponent(code)
    except money.UnsupportedCurrency as err:
        raise PydanticCustomError("currency_code", "{reason}", {"reason": str(err), "code": code}) from err
    return code


def _mailable(address: str) -> str:
    # EmailStr returns email-validator's display form, whose domain is Unicode (ada@xn--bcher-kva.example
    # became ada@bücher.example, which only SMTPUTF8 relays accept). Keep the ASCII (IDNA) form whenever the
    # local part is ASCII; only a non-ASCII local part (jürgen@example.com) needs SMTPUTF8 to be mailed.
    ascii_form = email_validator.validate_email(address, check_deliverability=False).ascii_email
    return ascii_form or address


Sku = Annotated[
    str,
    StringConstraints(pattern=SKU_PATTERN, max_length=64),
    Field(description="Stock keeping unit: capital letters, digits, `-` and `_`.", examples=["SKU-A"]),
]
CustomerId = Annotated[
    str,
    StringConstraints(pattern=CUSTOMER_ID_PATTERN, max_length=64),
    Field(description="The customer's id in the calling system.", examples=["cust-42"]),
]
Email = Annotated[
    EmailStr,
    AfterValidator(_mailable),
    Field(
        max_length=320,
        description="Kept with an ASCII (IDNA) domain whenever the local part is ASCII.",
        examples=["ada@example.com"],
    ),
]
PaymentToken = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=100),
    Field(
        description="A token from the payment provider. Simulated provider: `tok_ok` succeeds, "
        "`tok_declined` is declined, `tok_flaky` fails twice transiently, then succeeds, `tok_hold` "
        "holds the charge for 5 s, then succeeds (time to cancel).",
        examples=["tok_ok"],
    ),
]
CountryCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}$"),
    AfterValidator(_known_country),
    Field(
        description="ISO 3166-1 alpha-2. `ZZ` is the test country that the simulated carrier refuses.",
        examples=["DE"],
    ),
]
CurrencyCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    AfterValidator(_known_currency),
    Field(
        description="ISO 4217 currency code with a minor unit (amounts are integers of it: JPY 0 decimals, "
        "EUR 2, KWD 3); codes without one (XXX, XAU...) are refused.",
        examples=["EUR"],
    ),
]
ShortText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=PRINTABLE_TEXT)
]
Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=PRINTABLE_TEXT)
]
PostalCode = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9 -]{0,15}$", max_length=16)
]
MinorUnits = Annotated[int, Field(strict=True, ge=0, le=MAX_UNIT_PRICE, description="Amount in minor units.")]
StockLevel = Annotated[int, Field(strict=True, ge=0, le=MAX_STOCK)]
Cursor = Annotated[str, StringConstraints(pattern=CURSOR_PATTERN)]

# Request models refuse unknown fields: a typo is a 422, not silently ignored.
CLOSED = ConfigDict(extra="forbid")
