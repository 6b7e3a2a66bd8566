"""What the API holds open while it runs: created by the app's lifespan, never at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from temporalio.client import Client

from api.security import ApiKeyRing
from infra.db import Database, open_database
from infra.settings import Settings
from orchestrator.client import connect_temporal


@dataclass(frozen=True)
class Resources:
    settings: Settings
    database: Database
    temporal: Client
    key_ring: ApiKeyRing


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    database = open_database(settings)
    try:
        temporal = await connect_temporal(settings, wait_seconds=settings.api_temporal_connect_seconds)
        yield Resources(settings, database, temporal, ApiKeyRing.from_settings(settings))
    finally:
        await database.dispose()
