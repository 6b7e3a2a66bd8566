"""Database engine and sessions. Created by the composition root, never at import time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, CursorResult, Result, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.expression import Executable

from infra.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Pooled PostgreSQL connections are replaced after this long: firewalls and proxies drop idle connections
# silently, and a fresh connection picks up server-side settings. Cheaper than a ping per checkout.
POOL_RECYCLE_SECONDS = 1_800

T = TypeVar("T")

# libpq's TLS parameters, as PostgreSQL clients spell them in a connection URL's query.
POSTGRES_TLS_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl"})


def create_engine(database_url: str, *, echo: bool = False) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        engine = create_async_engine(
            url,
            echo=echo,
            # No pre-ping: on asyncpg it is three round trips (BEGIN, a query, ROLLBACK) per checkout.
            # Dead connections are discarded at checkout when the driver already knows (below), and
            # `transaction` retries the rest once.
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_size=10,
            max_overflow=20,
            **postgres_tls_arguments(url),
        )
        event.listen(engine.sync_engine, "checkout", discard_closed_connection)
        _track_first_statements(engine)
        return engine

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


def discard_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout listener of PostgreSQL engines: refuse a connection the server has closed.

    A server restart or pg_terminate_backend closes the socket; asyncpg notices while the connection sits
    in the pool, so this costs no round trip. The pool then tries another connection.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("pooled connection closed by the server")


# conn.info key: the `_FirstStatement` of the transaction `transaction` runs on this connection.
_FIRST_STATEMENT = "order_saga_first_statement"


class _FirstStatement:
    """Whether the transaction's first statement is still to complete (no effect on the server yet)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = True


def _track_first_statements(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _after_execute(conn: Connection, *_args: Any) -> None:
        marker = conn.info.get(_FIRST_STATEMENT)
        if marker is not None:
            marker.pending = False


async def transaction(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]], *, autocommit: bool = False
) -> T:
    """`await work(connection)` in one transaction, committed when it returns; its result.

    A pooled connection can be dead although the pool does not know it yet (the database restarted, a
    proxy dropped it): when the first statement fails on a disconnect, nothing reached the database, so
    the connection is invalidated (SQLAlchemy also invalidates the pool's older connections) and `work`
    runs once more on a fresh one. A disconnect later in the transaction, or at commit, is raised: its
    outcome may be unknown. `work` must keep its outside effects out of the first statement's way (it
    may run twice up to there). Raises whatever `work` raises, or the DBAPIError of the second attempt.
    `autocommit`: each statement commits on its own (PostgreSQL only; no BEGIN and COMMIT round trips).
    """
    for attempt in (1, 2):
        marker = _FirstStatement()
        async with engine.connect() as conn:
            if autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.info[_FIRST_STATEMENT] = marker
            try:
                async with conn.begin():
                    return await work(conn)
            except exc.DBAPIError as err:
                if attempt == 2 or not (err.connection_invalidated and marker.pending):
                    raise
            finally:
                if not conn.invalidated:
                    conn.info.pop(_FIRST_STATEMENT, None)
    raise AssertionError("unreachable: the second attempt returns or raises")


async def execute_alone(engine: AsyncEngine, statement: Executable) -> Result[Any]:
    """Run one statement in a transaction of its own (`transaction`, with its retry): on PostgreSQL in
    autocommit, one round trip instead of three."""

    async def run(conn: AsyncConnection) -> Result[Any]:
        return await conn.execute(statement)

    return await transaction(engine, run, autocommit=engine.dialect.name == "postgresql")


def insert_or_ignore(conn: AsyncConnection, entity: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT for `entity`, which has `.on_conflict_do_nothing()` on both databases."""
    return postgresql.insert(entity) if conn.dialect.name == "postgresql" else sqlite.insert(entity)


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a session factory is bound to (`create_session_factory`), for Core on the hot path."""
    bind = sessions.kw["bind"]
    assert isinstance(bind, AsyncEngine)
    return bind


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
