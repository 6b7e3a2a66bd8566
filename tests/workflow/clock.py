"""A non-deterministic workflow (it reads the wall clock): the sandboxed replay must catch it."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow


@workflow.defn
class ReadsTheClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()  # what workflow.now() is for
