"""API keys: which principal a key belongs to, and whether the development key is configured."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.security import ApiKeyRing, Principal, Scope, uses_development_key
from infra.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def test_a_key_names_its_principal_and_scopes() -> None:
    ring = ApiKeyRing(
        {"shop": "shop-key-0123456789", "ops": "ops-key-0123456789ab"},
        {"shop": ["orders:write"], "ops": ["admin", "orders:read"]},
    )

    assert ring.authenticate("shop-key-0123456789") == Principal("shop", frozenset({Scope.ORDERS_WRITE}))
    assert ring.authenticate("ops-key-0123456789ab") == Principal(
        "ops", frozenset({Scope.ADMIN, Scope.ORDERS_READ})
    )
    assert ring.authenticate("shop-key-012345678") is None
    assert ring.authenticate("") is None


def test_the_default_settings_carry_the_development_key_with_every_scope() -> None:
    settings = load_settings(env="development")
    ring = ApiKeyRing.from_settings(settings)

    assert uses_development_key(settings)
    principal = ring.authenticate(Settings.DEVELOPMENT_API_KEY)
    assert principal is not None and principal.scopes == frozenset(Scope)


def test_production_settings_have_no_default_key_refuse_the_development_key_and_accept_their_own() -> None:
    assert load_settings(env="production").api_keys == {}  # the worker, relay and reactors need none
    with pytest.raises(ValidationError, match="development API key"):
        load_settings(
            env="production",
            api_keys={"local-developer": Settings.DEVELOPMENT_API_KEY},
            api_key_scopes={"local-developer": ["admin"]},
        )
    own = load_settings(
        env="production", api_keys={"shop": "x" * 32}, api_key_scopes={"shop": ["orders:write"]}
    )
    assert not uses_development_key(own)


@pytest.mark.parametrize(
    ("keys", "scopes"),
    [
        ({"shop": "x" * 32}, {}),  # a principal without scopes
        ({"shop": "x" * 32}, {"shop": ["orders:write"], "ghost": ["admin"]}),  # scopes for nobody
        ({"shop": "x" * 32, "ops": "x" * 32}, {"shop": ["orders:write"], "ops": ["admin"]}),  # a shared key
        ({"shop": "short"}, {"shop": ["orders:write"]}),  # a weak key
        ({"shop": "x" * 32}, {"shop": ["orders:delete"]}),  # an unknown scope
        ({"bad name!": "x" * 32}, {"bad name!": ["admin"]}),
    ],
)
def test_inconsistent_key_settings_are_refused(keys: dict[str, str], scopes: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationError):
        load_settings(api_keys=keys, api_key_scopes=scopes)
