"""API keys and scopes: who is calling, and what they may do."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from infra.settings import Settings


class Scope(StrEnum):
    ORDERS_READ = "orders:read"
    ORDERS_WRITE = "orders:write"
    # Products, stock and operations.
    ADMIN = "admin"


class Needs:
    """The scope each kind of operation needs. The REST routes (`api.deps`) and the console's pages and
    actions (`api.console.deps`, which also need `admin` to sign in at all) both take it from here."""

    # Follow and list orders, their timeline and notifications, a customer's orders.
    READ_ORDERS = Scope.ORDERS_READ
    # Place and cancel orders.
    WRITE_ORDERS = Scope.ORDERS_WRITE
    # Products, stock, analytics, dead letters, replays, the console itself.
    OPERATE = Scope.ADMIN


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the name its key is configured under, and what it may do."""

    name: str
    scopes: frozenset[Scope]


class ApiKeyRing:
    """The configured keys; `authenticate` tells which principal, if any, a presented key belongs to."""

    def __init__(self, keys: Mapping[str, str], scopes: Mapping[str, Iterable[str]]) -> None:
        self._entries = [
            (secret.encode(), Principal(name, frozenset(Scope(scope) for scope in scopes[name])))
            for name, secret in keys.items()
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyRing:
        return cls(
            {name: key.get_secret_value() for name, key in settings.api_keys.items()},
            settings.api_key_scopes,
        )

    def principal_named(self, name: str) -> Principal | None:
        """The principal configured under `name` (a console session names its principal), or None."""
        return next((principal for _, principal in self._entries if principal.name == name), None)

    def authenticate(self, presented: str) -> Principal | None:
        candidate = presented.encode()
        found = None
        # Every key is compared, in constant time, so timing tells nothing about near misses.
        for secret, principal in self._entries:
            if hmac.compare_digest(candidate, secret):
                found = principal
        return found


def uses_development_key(settings: Settings) -> bool:
    return any(key.get_secret_value() == settings.DEVELOPMENT_API_KEY for key in settings.api_keys.values())
