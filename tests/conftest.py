"""Shared fixtures: a real Temporal dev server (offline binary) and real, migrated databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.activity import _Definition
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.providers import SimulatedCarrier, SimulatedPaymentGateway
from entrypoints.bootstrap import saga_activities
from infra.db import Database
from infra.settings import Settings
from orchestrator import search_attributes
from orchestrator.workflow import OrderWorkflow
from reactors.notification.smtp_sink import SmtpSink
from tests.support import executable, free_port, migrated_database

DEV_SERVER_ARGS = [
    # Dispatch workflow tasks promptly instead of every ~35 ms (see shared field notes).
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "frontend.namespaceCount=10000",
]


HISTORIES = Path(__file__).parent / "workflow" / "histories"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-histories",
        action="store_true",
        help=f"write the workflow histories of the saga path tests to {HISTORIES} for replay tests",
    )
    parser.addoption(
        "--update-screenshots",
        action="store_true",
        help="the browser tests save the console's screenshots to docs/screenshots (shown in the README)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "may_skip(reason): this test may skip even in CI (what it needs is not on CI's machine)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Under CI (`CI` set, as .ci/run has it), a test that skips fails: CI's machine is the one that runs
    everything, so a skip there hides a test that silently stopped running. `may_skip` exempts a test."""
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("CI", "").lower() in ("1", "true", "yes")
        and item.get_closest_marker("may_skip") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where this test must run: {reason}"
    return report


HistoryRecorder = Callable[[WorkflowHandle[Any, Any], str], Awaitable[None]]


@pytest.fixture
def record_history(request: pytest.FixtureRequest) -> HistoryRecorder:
    """Save a finished workflow's history under a name, when run with --record-histories."""

    async def record(handle: WorkflowHandle[Any, Any], name: str) -> None:
        if request.config.getoption("--record-histories"):
            HISTORIES.mkdir(parents=True, exist_ok=True)
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())

    return record


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=executable("temporal"),
        search_attributes=list(search_attributes.ALL),
        dev_server_extra_args=DEV_SERVER_ARGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database(db_backend: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, Database]]:
    async with migrated_database(db_backend, tmp_path) as (settings, database):
        yield settings, database


@dataclass
class SagaHarness:
    """A task queue of its own, bound to one test database, with inspectable simulated providers."""

    client: Client
    settings: Settings
    database: Database
    task_queue: str
    gateway: SimulatedPaymentGateway
    carrier: SimulatedCarrier

    def worker(self, replace: Sequence[Callable[..., Any]] = ()) -> Worker:
        """A worker for this harness; `replace` swaps in activities of the same names (test gates)."""
        activities = {
            activity_name(fn): fn
            for fn in saga_activities(
                self.settings, self.database.sessions, gateway=self.gateway, carrier=self.carrier
            )
        }
        activities.update({activity_name(fn): fn for fn in replace})
        return Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=[OrderWorkflow],
            activities=list(activities.values()),
            graceful_shutdown_timeout=timedelta(seconds=5),
        )


def activity_name(fn: Callable[..., Any]) -> str:
    definition = _Definition.from_callable(fn)
    assert definition is not None and definition.name is not None
    return definition.name


@pytest.fixture
def saga_harness(temporal_env: WorkflowEnvironment, database: tuple[Settings, Database]) -> SagaHarness:
    settings, db = database
    return SagaHarness(
        temporal_env.client,
        settings,
        db,
        task_queue="orders-test-" + uuid.uuid4().hex[:8],
        gateway=SimulatedPaymentGateway(),
        carrier=SimulatedCarrier(),
    )


@pytest.fixture
async def saga(saga_harness: SagaHarness) -> AsyncIterator[SagaHarness]:
    """The harness with its default worker running."""
    async with saga_harness.worker():
        yield saga_harness


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """The local SMTP sink on a free port, for the notification reactor."""
    sink = SmtpSink("127.0.0.1", free_port())
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
