"""ISO reference codes the API accepts: countries (ISO 3166-1 alpha-2). Currencies: domain.money."""

from __future__ import annotations

from functools import cache

import pycountry

from activities.providers import UNSERVICEABLE_COUNTRY

# `ZZ` (user-assigned in ISO 3166) is the documented test country: accepted here so that an order
# reaches the simulated carrier, which refuses it (SHIPPING_UNAVAILABLE).
TEST_COUNTRY = UNSERVICEABLE_COUNTRY


@cache
def country_codes() -> frozenset[str]:
    return frozenset(country.alpha_2 for country in pycountry.countries) | {TEST_COUNTRY}
