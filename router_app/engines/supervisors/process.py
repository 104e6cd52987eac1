"""Engines as plain child processes: the embedded default, the demo and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path

from router_app.engines.supervisors.base import SupervisorError

log = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the router dies, so no engine is orphaned holding a GPU."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def describe_returncode(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class ProcessSupervisor:
    """Runs one engine command in its own process group and keeps its recent output.

    Stop sends SIGTERM to the group, waits `stop_timeout_s`, then SIGKILLs the group.
    `on_exit` is called (with a description) when the process ends without being asked to.
    """

    def __init__(
        self,
        name: str,
        *,
        stop_timeout_s: float = 30.0,
        log_lines: int = 200,
        workdir: Path | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.description = f"process for {name}"
        self._stop_timeout_s = stop_timeout_s
        self._workdir = workdir
        self._on_exit = on_exit
        self._logs: deque[str] = deque(maxlen=log_lines)
        # Called with each line of output as it is read (the operator console's live log).
        self.on_line: Callable[[str], None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._exited: asyncio.Future[str] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        if not argv:
            raise SupervisorError(f"{self.name}: no command to start")
        if self._proc is not None and self._proc.returncode is None:
            raise SupervisorError(f"{self.name}: already running as pid {self._proc.pid}")
        self._stopping = False
        # The command line may hold secrets the router does not know of (a key in a flag, a token in a URL) and these
        # lines reach clients in load errors and /health: only the program's name here, the rest in the router's own
        # log at debug level.
        self._logs.append(f"[llm-router] starting {Path(argv[0]).name} (its command line: the router's debug log)")
        log.debug("%s: starting %s", self.name, " ".join(argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self._workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise SupervisorError(f"{self.name}: cannot run {argv[0]!r}: {exc.strerror}") from None
        self.description = f"pid {self._proc.pid}"
        self._exited = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_logs(self._proc), name=f"logs-{self.name}")
        self._waiter = asyncio.create_task(self._watch(self._proc, self._exited), name=f"watch-{self.name}")

    async def _read_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self._logs.append(text)
            log.debug("[%s] %s", self.name, text)
            if self.on_line is not None:
                self.on_line(text)

    async def _watch(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[str]) -> None:
        code = await proc.wait()
        # Like systemd's KillMode=control-group: nothing the engine forked may outlive it.
        self._signal_group(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        how = describe_returncode(code)
        self._logs.append(f"[llm-router] {how}")
        if not exited.done():
            exited.set_result(how)
        if not self._stopping:
            log.warning("engine %s (pid %s) %s", self.name, proc.pid, how)
            if self._on_exit is not None:
                self._on_exit(how)

    async def wait_exit(self) -> str:
        if self._exited is None:
            return "never started"
        return await asyncio.shield(self._exited)

    async def is_running(self) -> bool:
        return (
            self._proc is not None
            and self._proc.returncode is None
            and not (self._exited is not None and self._exited.done())
        )

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        if proc.returncode is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._wait_watch()), self._stop_timeout_s)
            except TimeoutError:
                log.warning("engine %s did not stop within %.0f s: SIGKILL", self.name, self._stop_timeout_s)
                self._signal_group(proc.pid, signal.SIGKILL)
                await self._wait_watch()
        else:
            await self._wait_watch()

    async def _wait_watch(self) -> None:
        if self._waiter is not None:
            await self._waiter

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def recent_logs(self, lines: int = 20) -> list[str]:
        return list(self._logs)[-lines:]

    async def pids(self) -> list[int]:
        return [self._proc.pid] if self._proc is not None and self._proc.returncode is None else []
