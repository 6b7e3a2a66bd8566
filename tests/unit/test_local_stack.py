"""`make run`'s broker check: a clear way out when no RabbitMQ can be had; the banner it prints."""

from __future__ import annotations

import pytest

from infra.settings import Settings, load_settings
from ops import local_stack

pytestmark = pytest.mark.unit


def test_no_broker_and_none_installed_exits_with_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ops.local_stack.shutil.which", lambda *_args, **_kwargs: None)
    # Port 1 on loopback refuses at once: nothing listens there.
    settings = load_settings(rabbitmq_url="amqp://guest:guest@127.0.0.1:1/")

    with pytest.raises(SystemExit) as exit_:
        local_stack.ensure_broker(settings)

    message = str(exit_.value.code)
    assert "RabbitMQ is not reachable at 127.0.0.1:1" in message
    assert "apt-get install rabbitmq-server" in message and "RABBITMQ_URL" in message


def test_banner_shows_the_urls_and_the_development_key() -> None:
    banner = local_stack.banner(load_settings(_env_file=None))
    assert "http://127.0.0.1:8000" in banner and "http://127.0.0.1:8233" in banner
    assert "http://127.0.0.1:8000/console" in banner
    assert f"Bearer {Settings.DEVELOPMENT_API_KEY}" in banner


def test_an_unreachable_database_server_exits_with_one_line_naming_it_without_its_password() -> None:
    # Port 1 on loopback refuses at once: nothing listens there.
    settings = load_settings(database_url="postgresql+asyncpg://orders:s3cret@127.0.0.1:1/orders")

    with pytest.raises(SystemExit) as exit_:
        local_stack.migrate(settings)

    message = str(exit_.value.code)
    assert "not reachable" in message and "postgresql+asyncpg://orders:***@127.0.0.1:1/orders" in message
    assert "s3cret" not in message and "DATABASE_URL" in message and "\n" not in message
