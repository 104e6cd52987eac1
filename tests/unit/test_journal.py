"""Following the engine units' journal for the console's log panel (engines/supervisors/journal.py).

This machine has no journald, so journalctl is played by a stand-in over a file of entries (one JSON object a line,
the shape `journalctl --output=json` of systemd 252 writes: Debian 12, the Molecule containers' systemd) that
keeps the options the follower relies on as journalctl 252 has them (src/journal/journalctl.c): `--lines`,
`--after-cursor`, `--unit` (matching _SYSTEMD_UNIT, UNIT, OBJECT_SYSTEMD_UNIT, COREDUMP_UNIT), `--output-fields`,
`--follow` implying the current boot unless `--merge` (parse_argv), local machine only unless `--merge`
(SD_JOURNAL_LOCAL_ONLY), and `--follow --unit` showing nothing when no entry matched at its start (as systemd#25649
reports; in a booted Debian 12 container it lost the first entry). The run against the real journal of real units
is in the Molecule verify (`GET /console/logs?source=tiny-b` shows tiny-b's llama-server lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_app.engines.supervisors.journal import JournalFollower, parse_entry

pytestmark = pytest.mark.anyio

UNIT_A = "llm-model@tiny-a.service"
UNIT_B = "llm-model@tiny-b.service"
BOOT, HOST_BOOT, MACHINE = "b0", "host-boot", "m0"


def entry(unit: str, message: object, cursor: str = "s=1;i=1", field: str = "_SYSTEMD_UNIT") -> str:
    return json.dumps({"__CURSOR": cursor, "__REALTIME_TIMESTAMP": "1733371200000000", field: unit,
                       "MESSAGE": message, "_PID": "4242", "PRIORITY": "6"})  # fmt: skip


def test_parse_entry_message_shapes() -> None:
    units = {UNIT_A}
    assert parse_entry(entry(UNIT_A, "main: server is listening"), units).lines == ["main: server is listening"]
    # Not valid UTF-8: journalctl writes the bytes as an array of numbers.
    raw = [*"größe ".encode(), 0xFF]
    assert parse_entry(entry(UNIT_A, raw), units).lines == ["größe \ufffd"]
    # Too large for journalctl's --output=json: MESSAGE is null; the cursor still counts.
    empty = parse_entry(entry(UNIT_A, None, cursor="s=1;i=9"), units)
    assert empty.lines == [] and empty.cursor == "s=1;i=9"
    assert parse_entry(entry(UNIT_A, "one\ntwo\n\n"), units).lines == ["one", "two"]


def test_parse_entry_unit_fields_and_machine() -> None:
    # systemd's own lines about the unit ("Started ...", "Main process exited ...") carry UNIT=, not _SYSTEMD_UNIT.
    started = parse_entry(entry(UNIT_A, "Started llm-model@tiny-a.service.", field="UNIT"), {UNIT_A})
    assert started.unit == UNIT_A
    assert parse_entry(entry(UNIT_B, "x"), {UNIT_A}) is None
    assert parse_entry(b"-- No entries --", {UNIT_A}) is None
    assert parse_entry(b"[1, 2]", {UNIT_A}) is None
    other = json.dumps({"__CURSOR": "c", "_SYSTEMD_UNIT": UNIT_A, "MESSAGE": "x", "_MACHINE_ID": "elsewhere"})
    assert parse_entry(other, {UNIT_A}, MACHINE) is None
    assert parse_entry(other, {UNIT_A}, "elsewhere").lines == ["x"]


STAND_IN = """
import json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["CALLS"], "a") as calls:
    calls.write(json.dumps(argv) + "\\n")
def option(name):
    return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)
units = [a.split("=", 1)[1] for a in argv if a.startswith("--unit=")]
follow, merge = "--follow" in argv, "--merge" in argv
fields = option("--output-fields")
def wanted(e):
    if units and not any(e.get(f) in units for f in ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")):
        return False
    if not merge and e.get("_MACHINE_ID") != os.environ["LOCAL_MACHINE"]:
        return False
    # --follow implies --boot (the boot ID this process reads from /proc) unless --merge.
    return merge or not follow or e.get("_BOOT_ID") == os.environ["SANDBOX_BOOT"]
def shown(e):
    keep = set(fields.split(",")) | {"__CURSOR", "__REALTIME_TIMESTAMP", "_BOOT_ID"} if fields else set(e)
    return json.dumps({k: v for k, v in e.items() if k in keep})
def journal():
    with open(os.environ["FEED"]) as feed:
        return [json.loads(line) for line in feed if line.endswith("\\n")]
entries = journal()
if option("--after-cursor"):
    at = next(i for i, e in enumerate(entries) if e["__CURSOR"] == option("--after-cursor")) + 1
else:
    matching = [i for i, e in enumerate(entries) if wanted(e)]
    lines = min(int(option("--lines")), len(matching))
    at = matching[-lines] if lines else len(entries)
    if follow and units and not matching:  # systemd#25649: nothing, ever
        entries, at = [], None
if at is not None:
    for e in entries[at:]:
        if wanted(e):
            print(shown(e), flush=True)
if not follow:
    sys.exit(0)
if os.environ.get("EXIT"):
    print("Failed to open journal: permission denied", file=sys.stderr)
    sys.exit(1)
seen = len(entries)
while at is not None:
    entries = journal()
    for e in entries[seen:]:
        if wanted(e):
            print(shown(e), flush=True)
    seen = len(entries)
    time.sleep(0.01)
time.sleep(3600)
"""


class Journal:
    """The stand-in's journal: entries appended as journald would, numbered in order."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        path.write_text("")

    def write(self, unit: str, message: object, *, boot: str = BOOT, machine: str = MACHINE, field: str = "") -> str:
        self.count += 1
        cursor = f"s=1;i={self.count}"
        record = {"__CURSOR": cursor, "_BOOT_ID": boot, "_MACHINE_ID": machine, field or "_SYSTEMD_UNIT": unit,
                  "MESSAGE": message, "_PID": "4242", "PRIORITY": "6"}  # fmt: skip
        with self.path.open("a") as feed:
            feed.write(json.dumps(record) + "\n")
        return cursor


async def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    delay = 0.01
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Journal:
    (tmp_path / "journalctl.py").write_text(STAND_IN)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("FEED", str(tmp_path / "journal.jsonl"))
    monkeypatch.setenv("LOCAL_MACHINE", MACHINE)
    monkeypatch.setenv("SANDBOX_BOOT", BOOT)
    journal = Journal(tmp_path / "journal.jsonl")
    journal.write("systemd-journald.service", "Journal started")
    return journal


def follower_for(journal: Journal, **options: object) -> JournalFollower:
    argv = [sys.executable, str(journal.path.parent / "journalctl.py")]
    return JournalFollower(argv, machine_id=MACHINE, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def following(journal: Journal, *, started: bool = True, **options: object) -> AsyncIterator[list[str]]:
    """tiny-a's lines as the follower hands them over; with `started`, once journalctl and the replay ran."""
    seen: list[str] = []
    follower = follower_for(journal, **options)
    follower.watch(UNIT_A, seen.append)
    follower.start()
    try:
        if started:
            await wait_for(lambda: len(calls(journal)) == 2, "the follower and the replay started")
        yield seen
    finally:
        await follower.close()


def calls(journal: Journal) -> list[list[str]]:
    path = journal.path.parent / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_last_lines_then_new_ones_each_once_and_a_new_unit_without_restart(journal: Journal) -> None:
    journal.write("cron.service", "not ours")
    for n in range(3):  # the last is the follower's first line and the replay's last: shown once
        journal.write(UNIT_A, f"old {n}")
    seen: list[tuple[str, str]] = []
    follower = follower_for(journal, replay_lines=2)
    follower.watch(UNIT_A, lambda line: seen.append(("a", line)))
    follower.start()
    try:
        await wait_for(lambda: len(seen) == 2, "tiny-a's last two lines")
        journal.write(UNIT_A, "new")
        journal.write(UNIT_B, "b before it is watched")
        await wait_for(lambda: len(seen) == 3, "tiny-a's new line")
        follower.watch(UNIT_B, lambda line: seen.append(("b", line)))  # a reload added tiny-b
        journal.write(UNIT_B, "b started", field="UNIT")
        journal.write(UNIT_B, "b listening")
        await wait_for(lambda: len(seen) == 5, "tiny-b's lines")
        follower.watch(UNIT_A, lambda line: seen.append(("a2", line)))  # a reload's new handler for tiny-a
        journal.write(UNIT_A, "after the reload")
        await wait_for(lambda: len(seen) == 6, "tiny-a's line to its new handler")
    finally:
        await follower.close()
    assert seen == [("a", "old 1"), ("a", "old 2"), ("a", "new"), ("b", "b started"), ("b", "b listening"),
                    ("a2", "after the reload")]  # fmt: skip
    assert len(calls(journal)) == 2  # one follower, one read of the last lines: no restart for a new unit


async def test_a_unit_that_never_logged_before_the_follower_started(journal: Journal) -> None:
    """journalctl 252 `--follow --unit=X` started before X's first entry loses entries (systemd#25649)."""
    async with following(journal) as seen:
        journal.write(UNIT_A, "first line ever")
        await wait_for(lambda: seen, "tiny-a's first line")
    assert seen == ["first line ever"]


async def test_a_sandbox_that_reads_another_boot_id_still_gets_the_lines(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a systemd-nspawn container, a unit with ProtectControlGroups= (the router's) reads the host's boot ID
    from /proc, not the container's that journald writes; `--follow` alone then matched nothing (Molecule)."""
    monkeypatch.setenv("SANDBOX_BOOT", HOST_BOOT)
    journal.write(UNIT_A, "before")
    async with following(journal, started=False) as seen:
        await wait_for(lambda: seen == ["before"], "the replayed line")
        journal.write(UNIT_A, "live")
        await wait_for(lambda: seen == ["before", "live"], "the live line")


async def test_another_machines_entries_are_left_out(journal: Journal) -> None:
    """`--merge` opens every journal on the host, a journal-remote's too: only this machine's units count."""
    async with following(journal) as seen:
        journal.write(UNIT_A, "another box's tiny-a", machine="m1")
        journal.write(UNIT_A, "ours")
        await wait_for(lambda: seen, "our line")
    assert seen == ["ours"]


async def test_journalctl_that_ends_is_restarted_after_the_last_entry(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXIT", "1")
    journal.write(UNIT_A, "one")
    async with following(journal, started=False, backoff_s=(0.05, 0.2)) as seen:
        await wait_for(lambda: len(calls(journal)) >= 3, "journalctl restarted")
        journal.write(UNIT_A, "two")
        last = journal.write("cron.service", "not ours")  # where to go on is the last entry of any unit
        await wait_for(lambda: "two" in seen, "the line written between two runs")
        await wait_for(lambda: any(f"--after-cursor={last}" in c for c in calls(journal)), "a run after the last")
    assert seen[:2] == ["one", "two"] and seen.count("one") == 1 and seen.count("two") == 1


async def test_no_journalctl_leaves_the_router_serving(tmp_path: Path) -> None:
    follower = JournalFollower([str(tmp_path / "no-such-journalctl")])
    follower.watch(UNIT_A, lambda line: None)
    follower.start()
    await wait_for(lambda: follower.last_error is not None, "the error")
    assert "no-such-journalctl" in follower.last_error
    await follower.close()


async def test_a_line_longer_than_asyncios_default_limit_is_read(journal: Journal) -> None:
    """journald keeps lines up to 48 KiB; as JSON numbers (not UTF-8) that is ~190 KiB, past asyncio's 64 KiB limit,
    which stopped the reading at that line for good (every restart began before it)."""
    async with following(journal) as seen:
        journal.write(UNIT_A, [255] * 48 * 1024)
        journal.write(UNIT_A, "next")
        await wait_for(lambda: len(seen) == 2, "the long line and the next")
    assert len(seen[0]) == 48 * 1024 and seen[1] == "next"
