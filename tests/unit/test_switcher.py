"""The switch owner with in-memory engines: ordering of stop/start, drain timeout, failures."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from router_app.config import ModelConfig, RouterSettings
from router_app.control.switcher import Switcher
from router_app.engines.adapters import EngineAdapter, Health
from router_app.engines.instance import EngineInstance, SwitchError
from router_app.engines.supervisors import SupervisorError
from router_app.metrics import RouterMetrics

pytestmark = pytest.mark.anyio


class MemorySupervisor:
    """Records lifecycle calls into a shared journal; `fail_start` makes the engine die while loading."""

    def __init__(self, name: str, journal: list[str], fail_start: bool = False, fail_stops: int = 0) -> None:
        self.name = name
        self.description = f"memory {name}"
        self.journal = journal
        self.fail_start = fail_start
        self.fail_stops = fail_stops  # this many stops fail, and the engine keeps running
        self.running = False
        self.exited: asyncio.Future[str] | None = None

    async def start(self, argv=None, env=None) -> None:
        self.journal.append(f"start {self.name}")
        self.running = True
        self.exited = asyncio.get_running_loop().create_future()
        if self.fail_start:
            self.running = False
            self.exited.set_result("exited with status 1")

    async def stop(self) -> None:
        if self.fail_stops:
            self.fail_stops -= 1
            self.journal.append(f"stop {self.name} failed")
            raise SupervisorError(f"systemctl stop {self.name} failed: Job canceled")
        self.journal.append(f"stop {self.name}")
        self.running = False
        if self.exited is not None and not self.exited.done():
            self.exited.set_result("exited with status 0")

    async def wait_exit(self) -> str:
        assert self.exited is not None
        return await asyncio.shield(self.exited)

    async def is_running(self) -> bool:
        return self.running

    async def recent_logs(self, lines: int = 20) -> list[str]:
        return ["error: failed to load model"]

    async def pids(self) -> list[int]:
        return []


class ReadyAdapter(EngineAdapter):
    def __init__(self, model: ModelConfig, supervisor: MemorySupervisor) -> None:
        super().__init__(model, client=None)  # type: ignore[arg-type]
        self.supervisor = supervisor

    async def health(self) -> Health:
        return Health.READY if self.supervisor.running else Health.NOT_YET

    async def probe_generation(self) -> Health:
        return Health.READY

    async def probe_sampled(self) -> Health:
        return Health.READY


def build(
    journal: list[str],
    drain_timeout_s: float = 30,
    failing: str = "",
    fairness_s: float = 10,
    loaded: bool = True,
    metrics: RouterMetrics | None = None,
) -> Switcher:
    """Models a and b; `loaded`: each has loaded before (so a load is not a first load)."""
    from router_app.memory.history import History

    settings = RouterSettings(drain_timeout_s=drain_timeout_s, fairness_s=fairness_s)
    runtimes = {}
    history = History(None)
    for name in ("a", "b"):
        model = ModelConfig(id=name, backend="llamacpp", port=1, command=["x"])
        supervisor = MemorySupervisor(name, journal, fail_start=name == failing)
        runtimes[name] = EngineInstance(model, ReadyAdapter(model, supervisor), supervisor, settings)
        if loaded:
            history.record_load(name, 1.0, model.revision)
    return Switcher(runtimes, settings, metrics, history=history)


async def test_evicted_model_stops_before_target_starts() -> None:
    journal: list[str] = []
    switcher = build(journal)
    await switcher.load("a")
    first = switcher.ticket("b")
    await first.wait()
    assert journal == ["start a", "stop a", "start b"]
    assert switcher.view.current() == {"default": ["b"]}
    first.release()


async def test_drain_timeout_evicts_anyway() -> None:
    journal: list[str] = []
    switcher = build(journal, drain_timeout_s=0.05, fairness_s=0)
    busy = switcher.ticket("a")
    await busy.wait()  # never released: a stuck request
    other = switcher.ticket("b")
    await asyncio.wait_for(other.wait(), 10)
    assert journal == ["start a", "stop a", "start b"]
    busy.release()
    other.release()
    assert switcher.scheduler.inflight("a") == 0 and switcher.scheduler.inflight("b") == 0


async def test_failed_load_reports_logs_and_router_recovers() -> None:
    journal: list[str] = []
    metrics = RouterMetrics()
    switcher = build(journal, failing="b", metrics=metrics)
    with pytest.raises(SwitchError, match="b: engine exited with status 1 while loading") as err:
        await switcher.load("b")
    assert "error: failed to load model" in str(err.value) and err.value.code == "model_load_failed"
    assert switcher.instance("b").state == "failed"
    failure = switcher.instance("b").info()["last_failure"]
    assert failure["cause"] == "exited" and failure["reason"] == str(err.value)  # type: ignore[index]
    assert metrics.registry.get_sample_value("llm_router_switches_total", {"model": "b", "outcome": "exited"}) == 1
    await switcher.load("a")
    assert switcher.view.current() == {"default": ["a"]}


async def test_waiting_ticket_released_by_vanished_client() -> None:
    journal: list[str] = []
    switcher = build(journal)
    await switcher.load("a")
    holder = switcher.ticket("a")
    await holder.wait()
    waiting = switcher.ticket("b")
    assert "Waiting for 1 request(s) on a" in waiting.status()
    waiting.release()  # the client went away
    holder.release()
    await asyncio.wait_for(_until(lambda: not switcher.view.switching()), 10)
    assert switcher.scheduler.inflight("b") == 0 and not switcher._tickets


async def _until(predicate) -> None:
    delay = 0.001
    while not predicate():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def test_a_follow_up_request_to_an_idle_model_others_wait_for_is_served_without_a_reload() -> None:
    """a loaded before in 1 s (history): idle while b waits, it lingers 0.1 s for its clients' next request."""
    journal: list[str] = []
    switcher = build(journal)
    await switcher.load("a")
    journal.clear()
    waiting = switcher.ticket("b")
    assert waiting.status().startswith("Waiting for follow-up requests to a")
    follow_up = switcher.ticket("a")
    assert follow_up.granted.done() and follow_up.runtime is switcher.instance("a"), "served by the resident a"
    follow_up.release()
    await asyncio.wait_for(waiting.wait(), 10)
    assert journal == ["stop a", "start b"]
    waiting.release()


async def test_busy_model_keeps_serving_until_fairness_bound_then_switches() -> None:
    journal: list[str] = []
    switcher = build(journal, fairness_s=0.2)
    holder = switcher.ticket("a")
    await holder.wait()
    waiting = switcher.ticket("b")
    more = switcher.ticket("a")
    assert more.granted.done(), "a keeps serving while b waits within the fairness bound"
    more.release()
    await asyncio.sleep(0)
    assert not waiting.granted.done()
    await asyncio.wait_for(_until(lambda: switcher.scheduler.phase("a") == "draining"), 10)
    late = switcher.ticket("a")
    assert not late.granted.done(), "a draining model takes no new requests"
    holder.release()
    await asyncio.wait_for(waiting.wait(), 10)
    assert journal == ["start a", "stop a", "start b"]
    waiting.release()
    late.release()


async def test_abandoned_load_is_cancelled_and_the_engine_stopped() -> None:
    journal: list[str] = []
    switcher = build(journal)
    gate = asyncio.Event()
    adapter = switcher.instance("a").adapter

    async def slow_health() -> Health:
        await gate.wait()
        return Health.READY

    adapter.health = slow_health  # type: ignore[method-assign]
    ticket = switcher.ticket("a")
    await asyncio.wait_for(_until(lambda: journal == ["start a"]), 10)
    ticket.release()  # the only client left
    await asyncio.wait_for(_until(lambda: journal == ["start a", "stop a"]), 10)
    await asyncio.wait_for(_until(lambda: switcher.scheduler.phase("a") == "stopped"), 10)
    assert switcher.instance("a").state == "stopped"


async def test_a_first_load_finishes_when_its_clients_leave() -> None:
    """A first load compiles and downloads (minutes): cancelling it when a client times out would start it from
    scratch at the next request, which would time out again. It finishes; later loads are cancelled as configured."""
    journal: list[str] = []
    switcher = build(journal, loaded=False)
    gate = asyncio.Event()

    async def slow_health() -> Health:
        await gate.wait()
        return Health.READY

    switcher.instance("a").adapter.health = slow_health  # type: ignore[method-assign]
    ticket = switcher.ticket("a")
    await asyncio.wait_for(_until(lambda: journal == ["start a"]), 10)
    ticket.release()  # the only client left
    gate.set()
    await asyncio.wait_for(_until(lambda: switcher.scheduler.phase("a") == "ready"), 10)
    assert journal == ["start a"] and switcher.instance("a").state == "ready"
    assert switcher.scheduler.spec("a").cancel_abandoned  # loaded once: from now on as configured (evict: stop)


async def test_reconfigure_keeps_unchanged_models_and_drains_changed_and_removed_ones() -> None:
    journal: list[str] = []
    settings = RouterSettings()
    runtimes = {}
    for name in ("a", "b", "c"):
        model = ModelConfig(id=name, backend="llamacpp", port=1, command=["x"], group=name)
        supervisor = MemorySupervisor(name, journal)
        runtimes[name] = EngineInstance(model, ReadyAdapter(model, supervisor), supervisor, settings)
    switcher = Switcher(runtimes, settings)
    for name in ("a", "b", "c"):  # one group each (no memory info: a group holds one model): all resident
        await switcher.load(name)
    in_flight = switcher.ticket("b")
    await in_flight.wait()
    old_b = runtimes["b"]
    assert in_flight.runtime is old_b
    journal.clear()

    changed = ModelConfig(id="b", backend="llamacpp", port=1, command=["x", "--new"], group="b")
    new_supervisor = MemorySupervisor("b-new", journal)
    new_b = EngineInstance(changed, ReadyAdapter(changed, new_supervisor), new_supervisor, settings)
    reload = asyncio.create_task(switcher.reconfigure({"b": new_b}, changed={"b"}, removed={"c"}))
    await asyncio.wait_for(_until(lambda: "stop c" in journal), 10)
    waiting = switcher.ticket("b")  # a request for b during the reload waits for the new definition
    await asyncio.sleep(0.05)
    assert "stop b" not in journal, "b's old engine finishes its request first"
    # The request granted before the reload is sent to the old engine, never to the new one under b's name,
    # which has not started (the reload race: the proxy looked the engine up by name when sending).
    assert switcher.instance("b") is new_b and not new_supervisor.running
    assert old_b.key == "b" and new_b.key == "b#1" and switcher.instances["b"] is old_b, "the old one keeps its key"
    assert in_flight.runtime is old_b
    in_flight.release()
    await asyncio.wait_for(reload, 10)
    await asyncio.wait_for(waiting.wait(), 10)
    assert journal == ["stop c", "stop b", "start b-new"]
    assert waiting.runtime is new_b
    assert switcher.instance("b") is new_b and "c" not in switcher.current
    assert sorted(switcher.instances) == ["a", "b#1"] and switcher.view.status("a") == "loaded"
    waiting.release()


async def test_a_reload_while_a_load_finishes_still_retires_the_old_engine() -> None:
    """The load's last steps (measuring its memory) may run after a reload renamed it: the old engine must still
    be stopped and the reload finish (found by review: the reload hung and requests for the model waited forever)."""
    journal: list[str] = []
    settings = RouterSettings()
    model = ModelConfig(id="b", backend="llamacpp", port=1, command=["x"])
    supervisor = MemorySupervisor("b", journal)
    gate = asyncio.Event()

    async def slow_pids() -> list[int]:
        await gate.wait()
        return []

    supervisor.pids = slow_pids  # type: ignore[method-assign]
    runtime = EngineInstance(model, ReadyAdapter(model, supervisor), supervisor, settings)

    class Memory:  # enough of MemoryModel for the switcher to measure after a load
        enabled = True
        settings = RouterSettings().memory

        def devices_of(self, _model: ModelConfig) -> tuple[str, ...]:
            return ("0",)

        def capacities(self) -> dict[str, int]:
            return {"0": 100}

        def measure(self, _model: ModelConfig, _pids: list[int]) -> dict[str, int]:
            return {"0": 10}

        async def wait_free(self, _devices: object, _needed: object) -> None:
            return None

    switcher = Switcher({"b": runtime}, settings, memory=Memory())  # type: ignore[arg-type]
    first = switcher.ticket("b")
    await asyncio.wait_for(_until(lambda: runtime.state == "ready"), 10)
    reload = asyncio.create_task(switcher.reconfigure({}, changed=set(), removed={"b"}))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(reload, 10)
    assert journal == ["start b", "stop b"] and not switcher.instances and not switcher.current
    with pytest.raises(SwitchError, match="removed from the configuration") as removed:
        await first.wait()
    assert removed.value.code == "model_removed"


class SleepyAdapter(ReadyAdapter):
    """An engine that may sleep; `says` is what it answers to "are you asleep?" (None: it cannot tell, as SGLang)."""

    supports_sleep = True

    def __init__(self, model: ModelConfig, supervisor: MemorySupervisor, says: bool | None) -> None:
        super().__init__(model, supervisor)
        self.says = says
        self.calls: list[str] = []

    async def health(self) -> Health:
        self.calls.append("health")
        return await super().health()

    async def asleep(self) -> bool | None:
        self.calls.append("asleep")
        return self.says

    async def sleep(self) -> None:
        self.calls.append("sleep")

    async def wake(self) -> None:
        self.calls.append("wake")

    async def fingerprint(self) -> str:
        self.calls.append("fingerprint")
        return "the weights' answer"


class RunningSupervisor(MemorySupervisor):
    """An engine already running when the router starts (a systemd unit that survived a router restart)."""

    def __init__(self, name: str, journal: list[str], pid: int) -> None:
        super().__init__(name, journal)
        self.running = True
        self.pid = pid
        self.exited = None

    async def wait_exit(self) -> str:
        if self.exited is None:
            self.exited = asyncio.get_running_loop().create_future()
        return await super().wait_exit()

    async def pids(self) -> list[int]:
        return [self.pid] if self.running else []


def adopting(
    says: bool | None, slept_pid: int | None, running_pid: int = 4242, known: bool = True, **settings_: float
) -> tuple[Switcher, SleepyAdapter]:
    """An SGLang-like model found running at start; `known`: the history records sleeps (persisted, new format)."""
    from router_app.memory.history import History

    settings = RouterSettings(**settings_)
    model = ModelConfig(id="s", backend="sglang", port=1, command=["x"], evict="sleep")
    supervisor = RunningSupervisor("s", [], running_pid)
    adapter = SleepyAdapter(model, supervisor, says)
    history = History(None)
    history.records_sleep = known
    history.get("s").asleep_pid = slept_pid
    history.get("s").asleep_fingerprint = "the weights' answer" if slept_pid else None
    return Switcher({"s": EngineInstance(model, adapter, supervisor, settings)}, settings, history=history), adapter


@pytest.mark.parametrize(
    ("says", "slept_pid", "asleep"),
    [
        (True, None, True),  # vLLM /is_sleeping, TabbyAPI without a model
        (False, 4242, False),  # the engine's own answer wins over the record
        (None, 4242, True),  # SGLang: the process the router put to sleep still runs
        (None, 1234, False),  # another process: systemd restarted it, awake
        (None, None, False),
    ],
)
async def test_router_start_adopts_sleeping_engines_as_asleep(says, slept_pid, asleep) -> None:
    """A sleeping SGLang must not get /health (it generates on released memory), nor be taken as awake; a sleeping
    vLLM answers /health 200 (engine-audit-2 #6). Its wake is checked with the fingerprint recorded at its sleep."""
    switcher, adapter = adopting(says, slept_pid)
    await switcher.start()
    assert switcher.instance("s").state == ("sleeping" if asleep else "ready")
    assert switcher.scheduler.phase("s") == ("sleeping" if asleep else "ready")
    assert ("health" in adapter.calls) is not asleep
    assert switcher.instance("s").fingerprint == ("the weights' answer" if asleep and slept_pid else None)
    await switcher.load("s")
    assert adapter.calls.count("wake") == (1 if asleep else 0)
    assert switcher.instance("s").state == "ready" and switcher.history.get("s").asleep_pid is None
    await switcher.shutdown(stop_engines=False)


async def test_a_sleeper_nobody_can_vouch_for_is_stopped_not_probed() -> None:
    """SGLang cannot say whether it sleeps; without a history that records sleeps (no state_dir, or an older
    router's file), a probe could crash it: it is stopped, and loads cold on its next request."""
    switcher, adapter = adopting(None, None, known=False)
    await switcher.start()
    assert adapter.calls == ["asleep"] and switcher.instance("s").supervisor.journal == ["stop s"]
    assert switcher.scheduler.phase("s") == "stopped"
    await switcher.shutdown(stop_engines=False)


async def test_a_sleeper_is_adopted_when_only_its_sleep_footprint_fits() -> None:
    """The fit check at start counts what the engine holds now: asleep, its sleep footprint."""
    switcher, _adapter = adopting(True, None)
    switcher.scheduler.set_capacity("default", 100)
    spec = switcher.scheduler.spec("s")
    switcher.scheduler.set_spec(replace(spec, devices=("default",), footprint=150, sleep_footprint=10))
    await switcher.start()
    assert switcher.scheduler.phase("s") == "sleeping"
    await switcher.shutdown(stop_engines=False)


async def test_the_engine_put_to_sleep_is_recorded_before_it_sleeps() -> None:
    switcher, adapter = adopting(False, None)
    await switcher.start()
    seen: list[int | None] = []

    async def sleep() -> None:
        seen.append(switcher.history.get("s").asleep_pid)
        adapter.calls.append("sleep")

    adapter.sleep = sleep  # type: ignore[method-assign]
    switcher.instance("s").fingerprint = "its answer"
    assert await switcher.unload("s")
    assert seen == [4242] and switcher.history.sleep_record("s").pid == 4242
    assert switcher.history.sleep_record("s").fingerprint == "its answer"
    await switcher.load("s")
    assert switcher.history.get("s").asleep_pid is None
    await switcher.shutdown(stop_engines=False)


async def test_a_first_load_gets_first_load_timeout_later_ones_load_timeout() -> None:
    """A first start compiles (FlashInfer/Triton JIT, torch.compile, CUDA graphs) and downloads; its caches make the
    later ones fast (engine-audit-2 #11). History keeps the revision a model last loaded with."""
    from router_app.memory.history import History

    settings = RouterSettings(load_timeout_s=0.2, first_load_timeout_s=30)
    model = ModelConfig(id="a", backend="llamacpp", port=1, command=["x"], revision="r1")
    supervisor = MemorySupervisor("a", [])
    loop = asyncio.get_running_loop()
    ready_at: list[float] = []

    class CompilingAdapter(ReadyAdapter):
        async def health(self) -> Health:
            return Health.READY if ready_at and loop.time() >= ready_at[0] else Health.NOT_YET

    async def start(argv=None, env=None) -> None:
        await MemorySupervisor.start(supervisor, argv, env)
        ready_at[:] = [loop.time() + 0.5]

    supervisor.start = start  # type: ignore[method-assign]
    history = History(None)
    runtime = EngineInstance(model, CompilingAdapter(model, supervisor), supervisor, settings)
    switcher = Switcher({"a": runtime}, settings, history=history)
    await switcher.load("a")  # 0.5 s > load_timeout_s: only the first-load timeout lets it through
    assert history.loaded_before("a", "r1") and not history.loaded_before("a", "r2")
    await switcher.unload("a")
    with pytest.raises(SwitchError, match=r"did not become ready within 0 s \(load_timeout_s\)"):
        await switcher.load("a")
    assert runtime.info()["last_failure"]["cause"] == "timeout"  # type: ignore[index]
    await switcher.shutdown(stop_engines=True)


async def test_a_drain_timeout_stops_a_sleeper_instead_of_sleeping_it() -> None:
    """The requests cut at a drain timeout may still run in the engine, and SGLang's memory release asserts an idle
    scheduler (0.5.23 weight_updater.py:339-341): stop it."""
    switcher, adapter = adopting(False, None, drain_timeout_s=0.05)
    await switcher.start()
    busy = switcher.ticket("s")
    await busy.wait()  # never released: a stuck request
    assert await asyncio.wait_for(switcher.unload("s"), 10)
    assert "sleep" not in adapter.calls and switcher.instance("s").supervisor.journal == ["stop s"]
    busy.release()
    await switcher.shutdown(stop_engines=False)


async def test_a_wake_never_gets_the_first_load_timeout() -> None:
    """Only a cold start compiles: a wake that hangs fails after load_timeout_s, also for an engine adopted asleep
    with no load in the history."""
    switcher, adapter = adopting(True, None, load_timeout_s=0.2, first_load_timeout_s=60)
    await switcher.start()

    async def hanging_wake() -> None:
        await asyncio.sleep(5)

    adapter.wake = hanging_wake  # type: ignore[method-assign]
    with pytest.raises(SwitchError, match=r"within 0 s \(load_timeout_s\)"):
        await switcher.load("s")
    await switcher.shutdown(stop_engines=False)


async def test_only_engines_that_build_kernels_at_first_use_get_the_sampled_probe() -> None:
    """llama.cpp compiles nothing at first use (SASS built by the role) and may serve an embedding-only model."""
    from router_app.engines.adapters.llamacpp import LlamaCppAdapter
    from router_app.engines.adapters.sglang import SGLangAdapter

    assert not LlamaCppAdapter.samples_on_load and SGLangAdapter.samples_on_load
    journal: list[str] = []
    switcher = build(journal)
    sampled: list[str] = []

    async def probe_sampled() -> Health:
        sampled.append("a")
        return Health.READY

    adapter = switcher.instance("a").adapter
    adapter.probe_sampled = probe_sampled  # type: ignore[method-assign]
    adapter.samples_on_load = False  # type: ignore[misc]
    await switcher.load("a")
    assert sampled == []
    await switcher.unload("a")
    adapter.samples_on_load = True  # type: ignore[misc]
    await switcher.load("a")
    assert sampled == ["a"]


async def test_a_failed_stop_keeps_the_memory_counted_until_the_engine_is_gone() -> None:
    """The next engine starts only once the old one is really stopped (asked again with backoff), never beside
    it; meanwhile the old one shows why."""
    journal: list[str] = []
    switcher = build(journal)
    supervisor_a = switcher.instance("a").supervisor
    await switcher.load("a")
    supervisor_a.fail_stops = 2
    ticket = switcher.ticket("b")
    await asyncio.wait_for(ticket.wait(), 10)
    assert journal == ["start a", "stop a failed", "stop a failed", "stop a", "start b"]
    assert switcher.instance("a").last_error == "could not be stopped: systemctl stop a failed: Job canceled"
    ticket.release()


async def test_a_reload_changes_adds_and_removes_remote_models_beside_local_ones() -> None:
    """Remote APIs (no supervisor) have nothing to drain or stop: a reload swaps them at once (it used to fail with
    a KeyError for a changed or removed one, leaving the reload half done)."""
    from router_app.engines.adapters import adapter_for

    def remote(model_id: str, port: int) -> EngineInstance:
        model = ModelConfig(id=model_id, backend="openai", url=f"http://127.0.0.1:{port}/v1")
        return EngineInstance(model, adapter_for(model, None), None, RouterSettings())  # type: ignore[arg-type]

    journal: list[str] = []
    settings = RouterSettings()
    model_a = ModelConfig(id="a", backend="llamacpp", port=1, command=["x"])
    supervisor_a = MemorySupervisor("a", journal)
    local_a = EngineInstance(model_a, ReadyAdapter(model_a, supervisor_a), supervisor_a, settings)
    old_r, gone = remote("r", 9), remote("gone", 9)
    switcher = Switcher({"a": local_a, "r": old_r, "gone": gone}, settings)
    in_flight = switcher.ticket("r")
    assert in_flight.runtime is old_r
    new_r, added = remote("r", 8), remote("a#1", 7)  # an id that looks like an instance key
    changed_a = ModelConfig(id="a", backend="llamacpp", port=1, command=["x", "--new"])
    supervisor = MemorySupervisor("a-new", journal)
    new_a = EngineInstance(changed_a, ReadyAdapter(changed_a, supervisor), supervisor, RouterSettings())
    await asyncio.wait_for(
        switcher.reconfigure({"r": new_r, "a#1": added, "a": new_a}, changed={"r", "a"}, removed={"gone"}), 10
    )
    assert switcher.instance("r") is new_r and switcher.instance("a#1") is added and "gone" not in switcher.current
    assert switcher.view.status("r") == "loaded" and not switcher.scheduler.manages(new_r.key)
    assert switcher.instance("a") is new_a and new_a.key not in ("a", "a#1") and added.key == "a#1"
    await switcher.load("a")
    assert journal[-1] == "start a-new"
    in_flight.release()


def _remote(model_id: str) -> EngineInstance:
    from router_app.engines.adapters import adapter_for

    model = ModelConfig(id=model_id, backend="openai", url="http://127.0.0.1:9/v1")
    return EngineInstance(model, adapter_for(model, None), None, RouterSettings())  # type: ignore[arg-type]


def _local(model_id: str, journal: list[str], name: str, **extra: object) -> EngineInstance:
    model = ModelConfig(id=model_id, backend="llamacpp", port=1, command=["x", name], **extra)
    supervisor = MemorySupervisor(name, journal)
    return EngineInstance(model, ReadyAdapter(model, supervisor), supervisor, RouterSettings())


async def test_a_request_on_a_remote_api_a_reload_made_local_never_counts_on_the_new_engine() -> None:
    journal: list[str] = []
    switcher = Switcher({"r": _remote("r")}, RouterSettings())
    remote_stream = switcher.ticket("r")  # a long stream on the remote API
    new_r = _local("r", journal, "r-local")
    await asyncio.wait_for(switcher.reconfigure({"r": new_r}, changed={"r"}, removed=set()), 5)
    local = switcher.ticket("r")
    await asyncio.wait_for(local.wait(), 5)
    remote_stream.release()
    assert new_r.key != "r" and switcher.scheduler.inflight(new_r.key) == 1, "the old stream is not the new engine's"
    local.release()


async def test_requests_waiting_for_a_model_a_reload_makes_remote_are_served_there() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    old = _local("a", journal, "a")

    async def slow_start(argv=None, env=None) -> None:
        await gate.wait()

    old.supervisor.start = slow_start  # type: ignore[union-attr, method-assign]
    switcher = Switcher({"a": old}, RouterSettings())
    waiting = switcher.ticket("a")  # its load hangs
    new = _remote("a")
    await asyncio.wait_for(switcher.reconfigure({"a": new}, changed={"a"}, removed=set()), 5)
    await asyncio.wait_for(waiting.wait(), 5)
    assert waiting.runtime is new
    waiting.release()


async def test_a_pinned_model_changed_by_a_reload_serves_its_waiters_from_the_new_definition() -> None:
    journal: list[str] = []
    switcher = Switcher({"a": _local("a", journal, "a", pinned=True)}, RouterSettings())
    await switcher.load("a")
    in_flight = switcher.ticket("a")
    await in_flight.wait()
    new = _local("a", journal, "a-new", pinned=True)
    reload = asyncio.create_task(switcher.reconfigure({"a": new}, changed={"a"}, removed=set()))
    await asyncio.sleep(0.05)
    waiting = switcher.ticket("a")  # not "model_too_large": the retiring engine is no longer pinned
    in_flight.release()
    await asyncio.wait_for(waiting.wait(), 5)
    assert waiting.runtime is new
    await asyncio.wait_for(reload, 5)
    waiting.release()


async def test_a_line_of_engine_output_checks_readiness_at_once_instead_of_at_the_next_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama-server b11312 marks itself ready, then prints "model loaded" (tools/server/server.cpp:482-485); a load
    that ended just after a poll waited up to POLL_MAX_S (0.25 s) for the next one, which made warmed switches
    0.55 or 0.75 s by chance (docs/benchmark-history.md). With polls an hour apart, only the line can end this."""
    import router_app.engines.instance as instance_module

    monkeypatch.setattr(instance_module, "POLL_FIRST_S", 3600.0)
    monkeypatch.setattr(instance_module, "POLL_MAX_S", 3600.0)
    checks: list[bool] = []

    class LoadingAdapter(ReadyAdapter):
        loaded = False

        async def health(self) -> Health:
            checks.append(self.loaded)
            return Health.READY if self.loaded else Health.NOT_YET

    journal: list[str] = []
    model = ModelConfig(id="a", backend="llamacpp", port=1, command=["x"])
    supervisor = MemorySupervisor("a", journal)
    adapter = LoadingAdapter(model, supervisor)
    runtime = EngineInstance(model, adapter, supervisor, RouterSettings())
    load = asyncio.ensure_future(runtime.activate())
    async with asyncio.timeout(30):  # guards a hang only: without the wake-up this waits an hour
        await _until(lambda: checks == [False])
        starting_since = runtime.since  # when it became `starting`
        runtime.engine_wrote()  # a line while loading: checked again, still loading
        await _until(lambda: checks == [False, False])
        assert runtime.since == starting_since, "a line of output is not a change of state"
        adapter.loaded = True
        runtime.engine_wrote()  # "model loaded"
        await load
    assert checks == [False, False, True] and runtime.state.value == "ready"
    assert runtime.since > starting_since, "`since` is when it became ready"
