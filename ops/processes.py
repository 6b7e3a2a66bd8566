"""One OS process of the service, started from a command line, stopped or killed on demand; its log kept.

Children get PR_SET_PDEATHSIG, so a harness that dies does not leave them burning the shared CPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from ops.provisioning import ROOT

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


@dataclass
class Component:
    """One OS process of the stack; it can be killed (SIGKILL), stopped (SIGTERM) and started again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0
    # Exit codes of every time it ended without us killing or stopping it (seen at the next start or check).
    crashes: list[int] = field(default_factory=list)
    _exit_expected: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        if self.running:
            return
        self.note_exit()  # a restart must not hide that it had died on its own
        self._exit_expected = False
        log = _open_log(self.log_path)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()  # the child holds its own descriptor
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, whatever was in flight is abandoned."""
        if self.process is None or self.process.returncode is not None:
            return
        self._exit_expected = True
        self.process.kill()
        await self.process.wait()
        self.kills += 1

    async def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
        if self.process is None or self.process.returncode is not None:
            return
        self._exit_expected = True
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def expect_exit(self) -> None:
        """The process ends (or ended) by design, e.g. a fault seam that kills its own process."""
        self._exit_expected = True

    def note_exit(self) -> None:
        """Record an exit we did not cause (once per process)."""
        if self.process is None or self.process.returncode is None or self._exit_expected:
            return
        self.crashes.append(self.process.returncode)
        self._exit_expected = True  # counted

    def psutil_process(self) -> psutil.Process | None:
        if not self.running:
            return None
        try:
            return psutil.Process(self.pid)
        except psutil.Error:
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident memory (VmHWM), Linux only."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
