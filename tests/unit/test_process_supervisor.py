"""The process supervisor against real child processes."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from router_app.engines.supervisors import ProcessSupervisor, SupervisorError
from tests.conftest import pid_alive

pytestmark = pytest.mark.anyio


async def test_exit_is_noticed_at_once_with_logs() -> None:
    exits: list[str] = []
    sup = ProcessSupervisor("m", on_exit=exits.append)
    await sup.start(["sh", "-c", "echo loading; echo 'error: no such file' >&2; exit 3"])
    assert await asyncio.wait_for(sup.wait_exit(), 10) == "exited with status 3"
    assert exits == ["exited with status 3"]
    logs = await sup.recent_logs()
    assert "loading" in logs and "error: no such file" in logs
    assert not await sup.is_running()


async def test_stop_terminates_the_whole_process_group() -> None:
    sup = ProcessSupervisor("m", stop_timeout_s=10)
    await sup.start(["sh", "-c", "sleep 300 & echo child $!; wait"])
    await _wait_for_line(sup, "child ")
    child = int(next(line for line in await sup.recent_logs() if line.startswith("child ")).split()[1])
    assert pid_alive(child) and await sup.is_running()
    await sup.stop()
    assert not await sup.is_running()
    assert not pid_alive(child), "children of the engine must not outlive it"


async def test_stop_escalates_to_sigkill_after_grace() -> None:
    exits: list[str] = []
    sup = ProcessSupervisor("m", stop_timeout_s=0.3, on_exit=exits.append)
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    )
    await sup.start([sys.executable, "-c", script])
    await _wait_for_line(sup, "up")
    await sup.stop()
    assert await sup.wait_exit() == "killed by SIGKILL"
    assert exits == [], "an exit we asked for is not reported as a crash"


async def test_missing_binary_is_a_clear_error() -> None:
    sup = ProcessSupervisor("m")
    with pytest.raises(SupervisorError, match="cannot run '/nonexistent/llama-server'"):
        await sup.start(["/nonexistent/llama-server"])


async def _wait_for_line(sup: ProcessSupervisor, prefix: str) -> None:
    delay = 0.01
    for _ in range(200):
        if any(line.startswith(prefix) for line in await sup.recent_logs()):
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise AssertionError(f"no line starting with {prefix!r}")


def test_engine_dies_with_the_router() -> None:
    """An engine started by a router that is SIGKILLed (no chance to clean up) does not linger."""
    import signal
    import subprocess
    import textwrap

    script = textwrap.dedent("""
        import asyncio, sys
        from router_app.engines.supervisors import ProcessSupervisor
        async def main():
            sup = ProcessSupervisor("m")
            await sup.start(["sleep", "300"])
            print(sup.pid, flush=True)
            await asyncio.sleep(300)
        asyncio.run(main())
    """)
    router = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    engine_pid = int(router.stdout.readline())
    assert pid_alive(engine_pid)
    router.send_signal(signal.SIGKILL)
    router.wait()
    delay = 0.01
    for _ in range(100):
        if not pid_alive(engine_pid):
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    assert not pid_alive(engine_pid)
