"""The engines' journal, followed live (engines as systemd units): the operator console's engine log lines.

One `journalctl --follow --output=json` process serves every watched unit; each entry's MESSAGE goes to the
handler of its unit. When the set of units grows (a config reload) journalctl is restarted after the last entry
it gave (`--after-cursor`), so nothing is shown twice or lost; when it ends by itself it is restarted the same way,
with backoff. The router's unit may read the journal (the role gives it the group systemd-journal); where it may
not, journalctl's own error is logged and the follower retries with backoff, never failing the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# One entry of `--output=json` per line: journald keeps a line up to 48 KiB (LineMax), and a message that is not UTF-8
# is written as an array of numbers, four bytes for one; asyncio's default limit of 64 KiB would stop the reading.
LINE_LIMIT = 16 * 1024 * 1024

# The fields by which `journalctl --unit` matches an entry (systemd 252, src/shared/logs-show.c add_matches_for_unit):
# the unit's own output, then what systemd and the coredump handler wrote about it.
_UNIT_FIELDS = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")


@dataclass(frozen=True)
class JournalEntry:
    """One journal entry of a watched unit: its unit, its message lines, and where to continue after it."""

    unit: str
    lines: list[str]
    cursor: str | None


def parse_entry(raw: bytes | str, units: Sequence[str] | set[str]) -> JournalEntry | None:
    """An entry of `journalctl --output=json` for one of `units`, or None (another unit, no message, not JSON).

    journalctl writes MESSAGE as a string, as an array of byte values where it is not valid UTF-8, or as null
    where it is too large (systemd.journal-fields(7), journalctl(1) `--output=json`)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    unit = next((entry[f] for f in _UNIT_FIELDS if isinstance(entry.get(f), str) and entry[f] in units), None)
    if unit is None:
        return None
    cursor = entry.get("__CURSOR") if isinstance(entry.get("__CURSOR"), str) else None
    message = entry.get("MESSAGE")
    if isinstance(message, list) and all(isinstance(b, int) and 0 <= b < 256 for b in message):
        message = bytes(message).decode(errors="replace")
    if not isinstance(message, str):
        return JournalEntry(unit, [], cursor)
    return JournalEntry(unit, [line for line in message.splitlines() if line.strip()], cursor)


class JournalFollower:
    """Follows the journal of the engines' units and hands each new line to the handler of its unit."""

    def __init__(
        self,
        journalctl: Sequence[str] = ("journalctl",),
        *,
        replay_lines: int = 50,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self._journalctl = list(journalctl)
        self._replay_lines = replay_lines
        self._backoff_s = backoff_s
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._units_changed = asyncio.Event()
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self._complaint = ""  # journalctl's last line on stderr in its current run

    @property
    def units(self) -> list[str]:
        return sorted(self._handlers)

    def watch(self, unit: str, on_line: Callable[[str], None]) -> None:
        """Send `unit`'s lines to `on_line` from now on (replacing its earlier handler, e.g. after a reload)."""
        new = unit not in self._handlers
        self._handlers[unit] = on_line
        if new:
            self._units_changed.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-follower")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _argv(self, units: list[str]) -> list[str]:
        where = [f"--after-cursor={self._cursor}"] if self._cursor else [f"--lines={self._replay_lines}"]
        return [
            *self._journalctl, "--follow", "--output=json", "--no-pager", *where,
            *(f"--unit={unit}" for unit in units),
        ]  # fmt: skip

    async def _run(self) -> None:
        delay = self._backoff_s[0]
        while True:
            if not self._handlers:
                await self._units_changed.wait()
            self._units_changed.clear()
            units = self.units
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self._argv(units),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    limit=LINE_LIMIT,
                )
            except OSError as exc:  # no journalctl on this host: say so once, keep serving without engine logs
                self.last_error = f"{self._journalctl[0]}: {exc}"
                log.warning("engine logs unavailable in the console: cannot run %s", self.last_error)
                return
            self._complaint = ""
            reading = asyncio.ensure_future(self._read(proc, set(units)))
            complaints = asyncio.ensure_future(self._complaints(proc))
            changed = asyncio.ensure_future(self._units_changed.wait())
            try:
                done, _ = await asyncio.wait({reading, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if proc.returncode is None:
                    proc.terminate()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
                for task in (reading, complaints):
                    task.cancel()
                await asyncio.gather(reading, complaints, return_exceptions=True)  # a reader's error ends this run
            self.restarts += 1
            if changed in done:  # a new unit: follow it too, from where we were
                delay = self._backoff_s[0]
                continue
            said = f": {self._complaint}" if self._complaint else ""
            self.last_error = f"journalctl exited with status {proc.returncode}{said}"
            log.warning("following the engines' journal: %s; again in %.1f s", self.last_error, delay)
            with contextlib.suppress(TimeoutError):  # backoff, cut short by a new unit
                await asyncio.wait_for(self._units_changed.wait(), delay)
            delay = min(delay * 2, self._backoff_s[1])

    async def _complaints(self, proc: asyncio.subprocess.Process) -> None:
        """journalctl's own messages (no permission to read the journal, a bad argument) in the router's log."""
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            if line := raw.decode(errors="replace").strip():
                self._complaint = line[:500]
                log.warning("following the engines' journal: journalctl: %s", self._complaint)

    async def _read(self, proc: asyncio.subprocess.Process, units: set[str]) -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            entry = parse_entry(raw, units)
            if entry is None:
                continue
            if entry.cursor:
                self._cursor = entry.cursor
            handler = self._handlers.get(entry.unit)
            for line in entry.lines if handler else ():
                try:
                    handler(line)  # type: ignore[misc]
                except Exception:  # a console subscriber's problem must not stop the follower
                    log.exception("journal line handler for %s failed", entry.unit)
