"""`make run` from a fresh clone, in every documented configuration: SQLite (the default) and PostgreSQL.

The launcher (`python -m ops.local_stack`: broker check, `var/`, migrations, then honcho with the
Procfile) runs in a copy of the tracked files, as a fresh clone has them (no `var/`, no `.env`), with
this virtual environment linked in. Only what isolates it from the machine's other stacks is changed:
free ports (TEMPORAL_ADDRESS and TEMPORAL_UI_URL move the dev server's ports), its own broker namespace.
The stack must answer /readyz 200, database, Temporal and broker all reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra.settings import load_settings
from messaging.broker import close_quietly, connect
from messaging.topology import Topology, delete_topology
from reactors.registry import REACTORS
from tests.support import ROOT, empty_database, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READY_WITHIN_SECONDS = 180


def fresh_clone(dest: Path) -> None:
    """The tracked files as they are in the work tree, without `var/`, `.env` or caches."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not (dest / "var").exists()
    (dest / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)


@dataclass
class Stack:
    url: str
    log_path: Path
    launcher: asyncio.subprocess.Process

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@contextlib.asynccontextmanager
async def local_stack(clone: Path, database_url: str | None) -> AsyncIterator[Stack]:
    """Run the launcher in `clone` until the block ends."""
    temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
    namespace = "stack-" + uuid.uuid4().hex[:10]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(clone),
        # The dev server's ports follow these two: no other stack's ports are touched.
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPORAL_UI_URL": f"http://127.0.0.1:{ui_port}",
        "API_PORT": str(api_port),
        "SMTP_PORT": str(free_port()),
        "WORKER_METRICS_PORT": "0",
        "RELAY_METRICS_PORT": "0",
        "REACTORS_METRICS_PORT": "0",
        "TEMPORAL_METRICS_ADDRESS": "",
        "BROKER_NAMESPACE": namespace,
        "LOG_LEVEL": "WARNING",
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    log_path = clone / "stack.log"
    with log_path.open("wb") as log:
        launcher = await asyncio.create_subprocess_exec(
            str(clone / ".venv" / "bin" / "python"),
            "-m",
            "ops.local_stack",
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: honcho and every component it starts are stopped together.
            start_new_session=True,
        )
    try:
        yield Stack(f"http://127.0.0.1:{api_port}", log_path, launcher)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGINT)  # honcho's Ctrl-C: stops every component
        try:
            await asyncio.wait_for(launcher.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            await asyncio.wait_for(launcher.wait(), 10)
        await _delete_broker_namespace(namespace)


async def _delete_broker_namespace(namespace: str) -> None:
    settings = load_settings(broker_namespace=namespace)
    with contextlib.suppress(Exception):
        connection = await connect(settings, "test-cleanup")
        try:
            channel = await connection.channel()
            names = sorted(reactor.name for reactor in REACTORS)
            await delete_topology(channel, Topology.from_settings(settings), names, 5)
        finally:
            await close_quietly(connection, 5)


async def wait_ready(stack: Stack) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
        async with asyncio.timeout(READY_WITHIN_SECONDS):
            while True:
                # honcho stops every component as soon as one exits, then exits itself.
                assert stack.launcher.returncode is None, f"the stack stopped:\n{stack.log_tail()}"
                try:
                    ready = await http.get("/readyz")
                    if ready.status_code == 200:
                        return ready
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.5)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_make_run_starts_from_a_fresh_clone(backend: str, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    fresh_clone(clone)
    async with (
        empty_database(backend, tmp_path) as url,
        # SQLite is the default: no DATABASE_URL at all, as a new user runs it.
        local_stack(clone, url if backend == "postgresql" else None) as stack,
    ):
        try:
            ready = await wait_ready(stack)
        except TimeoutError:
            pytest.fail(f"not ready within {READY_WITHIN_SECONDS}s:\n{stack.log_tail()}")

        assert ready.json()["status"] == "ready"
        # The dev server keeps its state in var/ on every configuration.
        assert (clone / "var" / "temporal.db").exists()
        assert (clone / "var" / "orders.db").exists() is (backend == "sqlite")
