"""Readiness: can this instance serve? The database, Temporal and the broker must all answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import aio_pika
from sqlalchemy import text

from api.resources import Resources
from api.schemas import CheckOut, Readiness


async def check_readiness(resources: Resources) -> Readiness:
    limit_seconds = resources.settings.api_readiness_timeout_seconds
    names_and_probes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("database", lambda: _database(resources)),
        ("temporal", lambda: _temporal(resources, limit_seconds)),
        ("broker", lambda: _broker(resources.settings.rabbitmq_url, limit_seconds)),
    ]
    results = await asyncio.gather(*(_run(probe, limit_seconds) for _, probe in names_and_probes))
    checks = {name: result for (name, _), result in zip(names_and_probes, results, strict=True)}
    return Readiness(status="ready" if all(c.ok for c in checks.values()) else "not_ready", checks=checks)


async def _run(probe: Callable[[], Awaitable[None]], limit_seconds: float) -> CheckOut:
    try:
        async with asyncio.timeout(limit_seconds):
            await probe()
    except TimeoutError:
        return CheckOut(ok=False, detail=f"no answer within {limit_seconds:g} s")
    except Exception as err:
        return CheckOut(ok=False, detail=f"{type(err).__name__}: {err}")
    return CheckOut(ok=True)


async def _database(resources: Resources) -> None:
    async with resources.database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _temporal(resources: Resources, limit_seconds: float) -> None:
    if not await resources.temporal.service_client.check_health(timeout=timedelta(seconds=limit_seconds)):
        raise RuntimeError("Temporal reports itself unhealthy")


async def _broker(url: str, limit_seconds: float) -> None:
    connection = await aio_pika.connect(url, timeout=limit_seconds)
    await connection.close()
