"""Database engine and sessions. Created by the composition root, never at import time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import URL, CursorResult, Result, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from infra.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000

# libpq's TLS parameters, as PostgreSQL clients spell them in a connection URL's query.
POSTGRES_TLS_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl"})


def create_engine(database_url: str, *, echo: bool = False) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            **postgres_tls_arguments(url),
        )

    engine = create_async_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, so that each one can be IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is locked"
        # when another writer got in between; taking the write lock up front makes writers queue.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def postgres_tls_arguments(url: URL) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Engine arguments for a PostgreSQL URL with libpq TLS parameters (`?sslmode=verify-full&sslrootcert=
    /ca.pem`, sslcert/sslkey for client certificates): none without them.

    SQLAlchemy hands URL query parameters to asyncpg as keyword arguments, which asyncpg does not accept
    for these; asyncpg reads them from a DSN, with libpq's meaning (modes disable .. verify-full, the
    root certificate, client certificate and key). So such a URL connects through a DSN of its own.
    """
    if not POSTGRES_TLS_PARAMETERS & set(url.query):
        return {}
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def connect() -> Any:
        return await asyncpg.connect(dsn)

    return {"async_creator": connect}


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@dataclass
class Database:
    """An engine and its session factory; `dispose()` closes the pool."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        await self.engine.dispose()


def open_database(settings: Settings) -> Database:
    """The engine and session factory of DATABASE_URL (connects lazily, on first use)."""
    engine = create_engine(settings.database_url, echo=settings.database_echo)
    return Database(engine, create_session_factory(engine))


def rowcount(result: Result[object]) -> int:
    """Rows an UPDATE or DELETE matched (execute() is typed as returning a plain Result)."""
    assert isinstance(result, CursorResult)
    return result.rowcount
