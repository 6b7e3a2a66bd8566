"""The retention run as an activity: every table's expired rows deleted in small batches (infra/retention)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from infra.retention import run_retention
from infra.settings import Settings


@dataclass(frozen=True)
class RetentionResult:
    """Rows deleted per table, and the number of batches it took."""

    deleted: dict[str, int]
    batches: int


class RetentionActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings

    @activity.defn(name="apply_retention")
    async def apply_retention(self) -> RetentionResult:
        """Delete every table's expired rows (infra/retention.py); safe to repeat."""
        report = await run_retention(self._sessions, self._settings)
        return RetentionResult(report.deleted, report.batches)
