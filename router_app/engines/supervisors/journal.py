"""The engines' journal, followed live (engines as systemd units): the operator console's engine log lines.

One `journalctl --follow --merge --output=json` process reads the whole journal and each entry of a watched unit
goes to that unit's handler; on its first start the units' last lines are read once (`--lines` with `--unit`)
and shown first. Why not `--follow --unit=...`: started before any matching entry exists, journalctl 252 (Debian 12)
lost the unit's first entry (seen in a booted Debian 12 container) or showed none at all (systemd#25649); following
everything, its position is always an entry. Why `--merge`: without it `--follow` implies `--boot` (the current boot
read from /proc, journalctl.c parse_argv of v252), and a unit with ProtectKernelTunables= or
ProtectControlGroups= inside a systemd-nspawn container reads the host's boot ID there, not the container's, so
no entry matched (seen in the Molecule containers); `--merge` also opens other machines' journals, whose entries
`_MACHINE_ID` leaves out.

When journalctl ends it is restarted after the last entry it gave (`--after-cursor`), with backoff, so nothing is
shown twice or lost. The router's unit may read the journal (the role gives it the group systemd-journal); where
it may not, journalctl's own error is logged and the follower retries, never failing the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# One entry of `--output=json` per line: journald keeps a line up to 48 KiB (LineMax), and a message that is not UTF-8
# is written as an array of numbers, four bytes for one; asyncio's default limit of 64 KiB would stop the reading.
LINE_LIMIT = 16 * 1024 * 1024

# The fields by which `journalctl --unit` matches an entry (systemd 252, src/shared/logs-show.c add_matches_for_unit):
# the unit's own output, then what systemd and the coredump handler wrote about it.
_UNIT_FIELDS = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")
_OUTPUT_FIELDS = "--output-fields=" + ",".join(("MESSAGE", "_MACHINE_ID", *_UNIT_FIELDS))
_CURSOR = re.compile(rb'"__CURSOR"\s*:\s*"([^"]*)"')


@dataclass(frozen=True)
class JournalEntry:
    """One journal entry of a watched unit: its unit, its message lines, and where to continue after it."""

    unit: str
    lines: list[str]
    cursor: str | None


def parse_entry(raw: bytes | str, units: Collection[str], machine_id: str | None = None) -> JournalEntry | None:
    """An entry of `journalctl --output=json` for one of `units` written on `machine_id` (when given), or None
    (another unit or machine, not JSON).

    journalctl writes MESSAGE as a string, as an array of byte values where it is not valid UTF-8, or as null
    where it is too large (systemd.journal-fields(7), journalctl(1) `--output=json`)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    if machine_id and entry.get("_MACHINE_ID", machine_id) != machine_id:
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


def local_machine_id(path: Path = Path("/etc/machine-id")) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


class JournalFollower:
    """Follows the journal and hands each new line of a watched unit to that unit's handler."""

    def __init__(
        self,
        journalctl: Sequence[str] = ("journalctl",),
        *,
        replay_lines: int = 50,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        machine_id: str | None = None,
    ) -> None:
        self._journalctl = list(journalctl)
        self._replay_lines = replay_lines
        self._backoff_s = backoff_s
        self._machine_id = machine_id if machine_id is not None else local_machine_id()
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._needles: list[bytes] = []
        self._watched = asyncio.Event()
        self._cursor: str | None = None  # the last entry read, of any unit
        self._replayed = False
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self._complaint = ""  # journalctl's last line on stderr in its current run

    @property
    def units(self) -> list[str]:
        return sorted(self._handlers)

    def watch(self, unit: str, on_line: Callable[[str], None]) -> None:
        """Send `unit`'s lines to `on_line` from now on (replacing its earlier handler, e.g. after a reload)."""
        self._handlers[unit] = on_line
        # How the unit's name appears inside journalctl's JSON: lines without it are not parsed.
        self._needles = [json.dumps(name)[1:-1].encode() for name in self._handlers]
        self._watched.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-follower")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _follow_argv(self) -> list[str]:
        # --lines=1: the journal's last entry, so journalctl's position is an entry (see the module's docstring).
        where = f"--after-cursor={self._cursor}" if self._cursor else "--lines=1"
        return [*self._journalctl, "--follow", "--merge", "--output=json", _OUTPUT_FIELDS, "--no-pager", where]

    def _replay_argv(self) -> list[str]:
        return [
            *self._journalctl, "--merge", "--output=json", _OUTPUT_FIELDS, "--no-pager",
            f"--lines={self._replay_lines}", *(f"--unit={unit}" for unit in self.units),
        ]  # fmt: skip

    async def _spawn(self, argv: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )

    async def _run(self) -> None:
        await self._watched.wait()  # no journalctl while no unit is watched (engines as processes)
        delay = self._backoff_s[0]
        while True:
            first_run = not self._replayed
            try:
                proc = await self._spawn(self._follow_argv())
            except OSError as exc:  # no journalctl on this host: say so once, keep serving without engine logs
                self.last_error = f"{self._journalctl[0]}: {exc}"
                log.warning("engine logs unavailable in the console: cannot run %s", self.last_error)
                return
            self._complaint = ""
            complaints = asyncio.ensure_future(self._complaints(proc))
            try:
                shown: set[str] = set()
                if first_run:
                    shown = await self._replay(proc)
                await self._read(proc, shown)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
                complaints.cancel()
                await asyncio.gather(complaints, return_exceptions=True)
            self.restarts += 1
            said = f": {self._complaint}" if self._complaint else ""
            self.last_error = f"journalctl exited with status {proc.returncode}{said}"
            log.warning("following the engines' journal: %s; again in %.1f s", self.last_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_s[1])

    async def _replay(self, follow: asyncio.subprocess.Process) -> set[str]:
        """The watched units' last lines, once, before what the follower reads; their cursors, so an entry the
        follower also gives is not shown twice. Runs once the follower has placed itself (its first line), so no
        entry falls between the two."""
        assert follow.stdout is not None
        first = b""
        with contextlib.suppress(TimeoutError):  # an empty journal prints nothing: replay anyway
            first = await asyncio.wait_for(follow.stdout.readline(), 5.0)
        shown: set[str] = set()
        replay = await self._spawn(self._replay_argv())
        output, errors = await replay.communicate()
        self._replayed = replay.returncode == 0
        if replay.returncode != 0:
            log.warning("reading the engines' recent journal: journalctl: %s", errors.decode(errors="replace")[:500])
        for raw in output.splitlines():
            if (entry := self._hand_over(raw)) and entry.cursor:
                shown.add(entry.cursor)
        if first:
            self._take(first, shown)
        return shown

    async def _read(self, proc: asyncio.subprocess.Process, shown: set[str]) -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            self._take(raw, shown)

    def _take(self, raw: bytes, shown: set[str]) -> None:
        """One line of the follower: remember where it is, hand it over if it is a watched unit's."""
        if found := _CURSOR.search(raw):
            self._cursor = found.group(1).decode()
            if self._cursor in shown:
                return
        if any(needle in raw for needle in self._needles):
            self._hand_over(raw)

    def _hand_over(self, raw: bytes) -> JournalEntry | None:
        entry = parse_entry(raw, self._handlers, self._machine_id)
        handler = self._handlers.get(entry.unit) if entry else None
        for line in entry.lines if entry and handler else ():
            try:
                handler(line)  # type: ignore[misc]
            except Exception:  # a console subscriber's problem must not stop the follower
                log.exception("journal line handler for %s failed", entry.unit)  # type: ignore[union-attr]
        return entry

    async def _complaints(self, proc: asyncio.subprocess.Process) -> None:
        """journalctl's own messages (no permission to read the journal, a bad argument) in the router's log."""
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            if line := raw.decode(errors="replace").strip():
                self._complaint = line[:500]
                log.warning("following the engines' journal: journalctl: %s", self._complaint)
