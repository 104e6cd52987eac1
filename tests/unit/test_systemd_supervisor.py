"""The systemd supervisor: unit names and the exact systemctl/journalctl commands it issues.

Its run against a real systemd is covered by the Molecule scenario of the Ansible role.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from router_app.engines.supervisors import SupervisorError, SystemdSupervisor, default_unit_name, systemd_escape
from router_app.engines.supervisors.systemd import CommandResult

pytestmark = pytest.mark.anyio

NAMES = ["tiny-a", "Qwen/Qwen2.5-7B-Instruct-AWQ", ".hidden", "a b", "größe:1_x.gguf", "-lead"]


ESCAPED = {
    "tiny-a": "tiny\\x2da",
    "Qwen/Qwen2.5-7B-Instruct-AWQ": "Qwen-Qwen2.5\\x2d7B\\x2dInstruct\\x2dAWQ",
    ".hidden": "\\x2ehidden",
    "a b": "a\\x20b",
    "größe:1_x.gguf": "gr\\xc3\\xb6\\xc3\\x9fe:1_x.gguf",
    "-lead": "\\x2dlead",
}


@pytest.mark.parametrize("name", NAMES)
def test_escape_matches_systemd_escape(name: str) -> None:
    """Every name against systemd-escape's answer (systemd 252), and against this machine's where it has one."""
    assert systemd_escape(name) == ESCAPED[name]
    binary = shutil.which("systemd-escape")
    if binary:
        answer = subprocess.run([binary, "--", name], capture_output=True, text=True, check=True)
        assert answer.stdout.strip() == ESCAPED[name]


def test_default_unit_name() -> None:
    assert default_unit_name("Qwen/Qwen2.5-7B") == "llm-router-model@Qwen-Qwen2.5\\x2d7B.service"


class FakeSystemctl:
    """Records argv; answers `show` from a scripted list of states."""

    def __init__(self, states: list[dict[str, str]], fail: set[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.states = states
        self.fail = fail

    async def __call__(self, argv: list[str]) -> CommandResult:
        self.calls.append(argv)
        if "show" in argv:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return CommandResult(0, "".join(f"{k}={v}\n" for k, v in state.items()), "")
        if "journalctl" in argv[0]:
            return CommandResult(0, "line 1\nerror: model not found\n", "")
        if any(word in self.fail for word in argv):
            return CommandResult(1, "", f"Job for {argv[-1]} failed.")
        if "is-active" in argv:
            return CommandResult(0 if self.states[0].get("ActiveState") == "active" else 3, "", "")
        return CommandResult(0, "", "")


ACTIVE = {"ActiveState": "active", "SubState": "running", "Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}


async def test_start_stop_and_query_commands() -> None:
    fake = FakeSystemctl([ACTIVE])
    unit = default_unit_name("tiny-a")
    sup = SystemdSupervisor(unit, systemctl=["sudo", "-n", "systemctl"], runner=fake)
    await sup.start()
    await sup.stop()
    assert await sup.is_running()
    assert await sup.recent_logs(5) == ["line 1", "error: model not found"]
    props = "--property=ActiveState,SubState,Result,ExecMainStatus,NRestarts"
    assert fake.calls == [
        ["systemctl", "show", unit, props],
        ["sudo", "-n", "systemctl", "start", unit],
        ["sudo", "-n", "systemctl", "stop", unit],
        ["systemctl", "is-active", "--quiet", unit],
        ["journalctl", "--unit", unit, "--lines", "5", "--no-pager", "--output", "cat"],
    ]


async def test_failed_start_carries_journal_lines() -> None:
    sup = SystemdSupervisor("m.service", runner=FakeSystemctl([ACTIVE], fail={"start"}))
    with pytest.raises(SupervisorError) as err:
        await sup.start()
    assert "systemctl start m.service failed: Job for m.service failed." in str(err.value)
    assert "error: model not found" in str(err.value)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            {**ACTIVE, "ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "1"},
            "m.service is failed (result exit-code, exit status 1)",
        ),
        ({**ACTIVE, "ActiveState": "activating", "SubState": "auto-restart"}, "being restarted by systemd"),
        ({**ACTIVE, "NRestarts": "1"}, "being restarted by systemd"),
        ({**ACTIVE, "ActiveState": "inactive", "SubState": "dead"}, "m.service is inactive"),
    ],
)
async def test_wait_exit_reports_death(state: dict[str, str], expected: str) -> None:
    fake = FakeSystemctl([ACTIVE, ACTIVE, ACTIVE, state])
    sup = SystemdSupervisor("m.service", runner=fake, poll_max_s=0.01)
    await sup.start()
    assert expected in await sup.wait_exit()
