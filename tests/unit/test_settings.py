"""Settings: embedded defaults, validation at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import load_settings

pytestmark = pytest.mark.unit


def test_defaults_are_embedded_sqlite_and_local_temporal() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert settings.is_sqlite
    assert settings.temporal_address == "localhost:7233"
    assert settings.temporal_task_queue == "orders"


def test_postgresql_is_accepted_and_other_drivers_are_refused() -> None:
    assert not load_settings(database_url="postgresql+asyncpg://u@h/db").is_sqlite
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        load_settings(database_url="postgresql://u@h/db")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_TASK_QUEUE", "orders-eu")
    monkeypatch.setenv("SIMULATED_PAYMENT_LATENCY_MS", "250")
    settings = load_settings()
    assert settings.temporal_task_queue == "orders-eu"
    assert settings.simulated_payment_latency_ms == 250
    monkeypatch.setenv("SIMULATED_PAYMENT_LATENCY_MS", "-1")
    with pytest.raises(ValidationError):
        load_settings()
