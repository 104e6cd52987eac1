"""Engines as systemd units, started and stopped with systemctl (production).

The Ansible role renders one unit per model; the router never writes unit files and never
runs daemon-reload. It only starts, stops and queries units, which its non-root user is
allowed to do for exactly those units.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router_app.engines.supervisors.base import SupervisorError

log = logging.getLogger(__name__)

DEFAULT_UNIT_TEMPLATE = "llm-router-model@.service"
_UNIT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def systemd_escape(text: str) -> str:
    """Escape a string for use in a unit name, as `systemd-escape` does (not --path)."""
    out: list[str] = []
    for index, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif char in _UNIT_SAFE and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def default_unit_name(model_id: str) -> str:
    """The instance of the role's template unit for a model id, e.g. llm-router-model@tiny\\x2da.service."""
    prefix, _, suffix = DEFAULT_UNIT_TEMPLATE.partition("@")
    return f"{prefix}@{systemd_escape(model_id)}{suffix}"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[list[str]], Awaitable[CommandResult]]


async def run_command(argv: list[str]) -> CommandResult:
    """Run a command without a shell and collect its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


_SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")


class SystemdSupervisor:
    """Start, stop and watch one systemd unit through `systemctl` (prefix configurable, e.g. sudo -n)."""

    def __init__(
        self,
        unit: str,
        *,
        systemctl: list[str] | None = None,
        journalctl: list[str] | None = None,
        runner: Runner = run_command,
        poll_max_s: float = 1.0,
    ) -> None:
        self.unit = unit
        self.description = f"unit {unit}"
        self._systemctl = list(systemctl or ["systemctl"])
        self._journalctl = list(journalctl or ["journalctl"])
        self._run = runner
        self._poll_max_s = poll_max_s
        self._restarts_at_start: int | None = None

    async def _systemctl_cmd(self, *args: str) -> CommandResult:
        """start/stop: through the configured prefix (e.g. sudo -n systemctl), which carries the privilege."""
        return await self._run([*self._systemctl, *args])

    async def _query(self, *args: str) -> CommandResult:
        """Read-only queries need no privilege: plain systemctl."""
        return await self._run(["systemctl", *args])

    async def show(self) -> dict[str, str]:
        """The unit's state properties (ActiveState, SubState, Result, ExecMainStatus, NRestarts)."""
        result = await self._query("show", self.unit, "--property=" + ",".join(_SHOW_PROPERTIES))
        props: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        return props

    async def start(self, argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        props = await self.show()
        self._restarts_at_start = int(props.get("NRestarts", "0") or 0)
        result = await self._systemctl_cmd("start", self.unit)
        if result.returncode != 0:
            logs = "\n".join(await self.recent_logs())
            raise SupervisorError(f"systemctl start {self.unit} failed: {result.stderr.strip()}\n{logs}".rstrip())

    async def stop(self) -> None:
        result = await self._systemctl_cmd("stop", self.unit)
        if result.returncode != 0:
            raise SupervisorError(f"systemctl stop {self.unit} failed: {result.stderr.strip()}")

    async def is_running(self) -> bool:
        result = await self._query("is-active", "--quiet", self.unit)
        return result.returncode == 0

    def _death(self, props: dict[str, str]) -> str | None:
        active, sub = props.get("ActiveState", ""), props.get("SubState", "")
        restarts = int(props.get("NRestarts", "0") or 0)
        how = f"result {props.get('Result', '?')}, exit status {props.get('ExecMainStatus', '?')}"
        if active in ("failed", "inactive"):
            return f"{self.unit} is {active} ({how})"
        if sub == "auto-restart" or (self._restarts_at_start is not None and restarts > self._restarts_at_start):
            return f"{self.unit} died and is being restarted by systemd ({how})"
        return None

    async def wait_exit(self) -> str:
        delay = 0.05
        while True:
            death = self._death(await self.show())
            if death is not None:
                return death
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_max_s)

    async def pids(self) -> list[int]:
        result = await self._query("show", self.unit, "--property=MainPID", "--value")
        pid = result.stdout.strip()
        return [int(pid)] if pid.isdigit() and int(pid) > 0 else []

    async def recent_logs(self, lines: int = 20) -> list[str]:
        result = await self._run(
            [*self._journalctl, "--unit", self.unit, "--lines", str(lines), "--no-pager", "--output", "cat"]
        )
        if result.returncode != 0:
            return [f"[llm-router] journalctl failed: {result.stderr.strip()}"]
        return result.stdout.splitlines()[-lines:]
