"""What the switch owner needs from something that starts and stops one engine."""

from __future__ import annotations

from typing import Protocol


class SupervisorError(Exception):
    """Starting or stopping an engine failed; the message carries the reason and recent log lines."""


class Supervisor(Protocol):
    """Lifecycle of one engine: a child process group or a systemd unit."""

    description: str

    async def start(self, argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """Launch the engine and return once it is launched (not yet ready)."""

    async def stop(self) -> None:
        """Stop the engine and return once it is gone."""

    async def wait_exit(self) -> str:
        """Return (with a description of how it ended) once the started engine has died."""

    async def is_running(self) -> bool:
        """Whether the engine is running now."""

    async def recent_logs(self, lines: int = 20) -> list[str]:
        """The engine's last log lines, oldest first."""

    async def pids(self) -> list[int]:
        """The engine's main process id(s); memory is measured over them and their descendants."""
