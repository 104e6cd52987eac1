"""Following the engine units' journal for the console's log panel (engines/supervisors/journal.py).

The entries below have the shape `journalctl --output=json` of systemd 252 writes (Debian 12, the Molecule
containers' systemd); the follower is driven here by a stand-in for journalctl that prints such entries and records
how it was called, since this machine has no journald. Its run against the real journal of a real unit is in the
Molecule verify (`GET /console/logs?source=tiny-a` shows tiny-a's llama-server lines).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from router_app.engines.supervisors.journal import JournalFollower, parse_entry

pytestmark = pytest.mark.anyio

UNIT_A = "llm-model@tiny-a.service"
UNIT_B = "llm-model@tiny-b.service"


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


def test_parse_entry_unit_fields() -> None:
    # systemd's own lines about the unit ("Started ...", "Main process exited ...") carry UNIT=, not _SYSTEMD_UNIT.
    started = parse_entry(entry(UNIT_A, "Started llm-model@tiny-a.service.", field="UNIT"), {UNIT_A})
    assert started.unit == UNIT_A
    assert parse_entry(entry(UNIT_B, "x"), {UNIT_A}) is None
    assert parse_entry(b"-- No entries --", {UNIT_A}) is None
    assert parse_entry(b"[1, 2]", {UNIT_A}) is None


STAND_IN = """
import json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["CALLS"], "a") as calls:
    calls.write(json.dumps(argv) + "\\n")
n = sum(1 for _ in open(os.environ["CALLS"]))
if os.environ.get("LONG"):  # a message of 48 KiB that is not UTF-8: ~190 KiB of JSON numbers
    unit = next(a for a in argv if a.startswith("--unit="))[len("--unit="):]
    print(json.dumps({"__CURSOR": "c0", "_SYSTEMD_UNIT": unit, "MESSAGE": [255] * 48 * 1024}))
for arg in argv:
    if arg.startswith("--unit="):
        unit = arg[len("--unit="):]
        print(json.dumps({"__CURSOR": f"c{n}-{unit}", "_SYSTEMD_UNIT": unit, "MESSAGE": f"call {n} {unit}"}))
sys.stdout.flush()
if os.environ.get("EXIT"):
    print("Failed to open journal: permission denied", file=sys.stderr)
    sys.exit(1)
time.sleep(3600)
"""


async def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    delay = 0.01
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    script = tmp_path / "journalctl.py"
    script.write_text(STAND_IN)
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(calls))
    return [sys.executable, str(script)], calls


def read_calls(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


async def test_lines_reach_their_unit_and_a_new_unit_continues_after_the_cursor(
    stand_in: tuple[list[str], Path],
) -> None:
    argv, calls = stand_in
    seen: list[tuple[str, str]] = []
    follower = JournalFollower(argv, replay_lines=7)
    follower.watch(UNIT_A, lambda line: seen.append(("a", line)))
    follower.start()
    try:
        await wait_for(lambda: seen, "tiny-a's line")
        assert seen == [("a", f"call 1 {UNIT_A}")]
        first = read_calls(calls)[0]
        assert first[:4] == ["--follow", "--output=json", "--no-pager", "--lines=7"]
        assert first[4:] == [f"--unit={UNIT_A}"]

        follower.watch(UNIT_B, lambda line: seen.append(("b", line)))
        await wait_for(lambda: len(seen) == 3, "both units' lines after the restart")
        second = read_calls(calls)[1]
        assert f"--after-cursor=c1-{UNIT_A}" in second and not any(a.startswith("--lines") for a in second)
        assert second[-2:] == [f"--unit={UNIT_A}", f"--unit={UNIT_B}"]
        assert sorted(seen[1:]) == [("a", f"call 2 {UNIT_A}"), ("b", f"call 2 {UNIT_B}")]

        follower.watch(UNIT_A, lambda line: seen.append(("a2", line)))  # a reload's new handler: no restart
        await asyncio.sleep(0)
        assert len(read_calls(calls)) == 2
    finally:
        await follower.close()


async def test_journalctl_that_ends_is_restarted_with_backoff(
    stand_in: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, calls = stand_in
    monkeypatch.setenv("EXIT", "1")
    seen: list[str] = []
    follower = JournalFollower(argv, backoff_s=(0.05, 0.2))
    follower.watch(UNIT_A, seen.append)
    follower.start()
    try:
        await wait_for(lambda: len(read_calls(calls)) >= 3, "three runs of journalctl")
        assert "permission denied" in (follower.last_error or "")
        later = read_calls(calls)[2]
        assert f"--after-cursor=c2-{UNIT_A}" in later  # nothing shown twice after a restart
    finally:
        await follower.close()
    assert seen[:2] == [f"call 1 {UNIT_A}", f"call 2 {UNIT_A}"]


async def test_no_journalctl_leaves_the_router_serving(tmp_path: Path) -> None:
    follower = JournalFollower([str(tmp_path / "no-such-journalctl")])
    follower.watch(UNIT_A, lambda line: None)
    follower.start()
    await wait_for(lambda: follower.last_error is not None, "the error")
    assert "no-such-journalctl" in follower.last_error
    await follower.close()


async def test_a_line_longer_than_asyncios_default_limit_is_read(
    stand_in: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """journald keeps lines up to 48 KiB; as JSON numbers (not UTF-8) that is ~190 KiB, past asyncio's 64 KiB limit,
    which stopped the reading at that line for good (every restart began before it)."""
    argv, _ = stand_in
    monkeypatch.setenv("LONG", "1")
    seen: list[str] = []
    follower = JournalFollower(argv)
    follower.watch(UNIT_A, seen.append)
    follower.start()
    try:
        await wait_for(lambda: len(seen) == 2, "the long line and the next")
    finally:
        await follower.close()
    assert len(seen[0]) == 48 * 1024 and seen[1] == f"call 1 {UNIT_A}"
