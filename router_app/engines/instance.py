"""One model's engine as the switch owner sees it: state, start/wake, readiness, stop/sleep.

The readiness loop lives here once for every engine kind: poll the adapter's health with
backoff (connection refused and 503 mean "not yet"), then a 1-token greedy probe and, after a
cold start, one sampled request; abort the moment the supervisor reports that the engine died,
with its last log lines.

Wake integrity: for a model that sleeps, the greedy answer to a fixed probe is recorded at a cold
load (asked twice; if the two differ it stays unknown) and asked again after every wake. Different
tokens (twice in a row) mean the wake brought back other weights (e.g. SGLang without a CPU backup of the weights):
the engine is stopped and started cold, with a WARNING, a counter and the reason in `info()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import httpx

from router_app.config import ModelConfig, RouterSettings
from router_app.engines.adapters import EngineAdapter, EngineError, Health
from router_app.engines.slots import SlotEngine, SlotKeeper, SlotReport
from router_app.engines.sockets import SocketDir
from router_app.engines.supervisors import Supervisor, SupervisorError
from router_app.memory.history import SleepRecord

if TYPE_CHECKING:
    from router_app.metrics import RouterMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_FIRST_S = 0.002
POLL_MAX_S = 0.25
# Bounds one wake-integrity probe beyond the adapter's own timeout; only a dead engine fails the switch there.
FINGERPRINT_DEADLINE_S = 120.0


class ModelState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    SLEEPING = "sleeping"
    FAILED = "failed"


class LoadFailure(StrEnum):
    """Why an engine did not become ready: `last_failure.cause` in /health, the `outcome` of
    llm_router_switches_total and the load's log line."""

    START_FAILED = "start_failed"  # the supervisor could not start it (no binary, systemctl refused)
    EXITED = "exited"  # the engine exited while loading
    TIMEOUT = "timeout"  # not ready within load_timeout_s (first_load_timeout_s for a first load)
    ENGINE_ERROR = "engine_error"  # the engine refused: a failed load or wake call, an error from its API
    CANCELLED = "cancelled"  # every waiting client left (a later load; a first load always finishes)
    INTERNAL = "internal"  # a bug in the router: logged with its traceback


class SwitchError(Exception):
    """Making a model resident failed; the message is fit to show to the client, `code` is its error code and
    `failure` why the engine did not become ready."""

    code = "model_load_failed"

    def __init__(self, message: str, failure: LoadFailure = LoadFailure.ENGINE_ERROR) -> None:
        super().__init__(message)
        self.failure = failure


def free_port(host: str) -> int:
    """A port the kernel considers free right now (the engine binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def expand(argv: list[str], values: dict[str, str]) -> list[str]:
    """Replace ${NAME} macros (PORT, SOCKET, HOST, MODEL_ID, SERVED_NAME) in a command."""
    out = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("${" + name + "}", value)
        out.append(arg)
    return out


class EngineInstance:
    """Lifecycle of one model's engine. Only the switch owner calls `activate`/`deactivate`."""

    def __init__(
        self,
        model: ModelConfig,
        adapter: EngineAdapter,
        supervisor: Supervisor | None,
        settings: RouterSettings,
        on_lost: Callable[[str, str], None] | None = None,
        metrics: RouterMetrics | None = None,
        sockets: SocketDir | None = None,
        slots: SlotKeeper | None = None,
    ) -> None:
        self.model = model
        # The switcher's key for this instance: the model's id, or `<id>#<reload>` for one a config reload made.
        self.key = model.id
        self.adapter = adapter
        self.supervisor = supervisor
        self._settings = settings
        self.on_lost = on_lost
        self.state = ModelState.READY if supervisor is None else ModelState.STOPPED
        self.last_error: str | None = None
        self.last_eviction: dict[str, str | float] | None = None  # cause, reason, at (unix time)
        self.last_failure: dict[str, str | float] | None = None  # the last load that failed: cause, reason, at
        self.since = time.time()
        self.port: int | None = model.port
        self.socket: str | None = None  # `${SOCKET}`: the Unix socket path, picked at the first start
        self._sockets = sockets or SocketDir()
        # KV continuity (llama.cpp with a slot directory): saves before a stop, restores after a cold load.
        self.slots = slots
        self.kv: dict[str, object] = {}  # for /health: saved, restored, reused, last_error
        self._restored_tokens: int | None = None  # until the first answer after a restore says what it reused
        self.load_seconds: float | None = None
        self._watch: asyncio.Task[None] | None = None
        self._metrics = metrics
        # Wake integrity: the probe's answer at the last cold load (None = unknown), restarts it caused.
        self.fingerprint: str | None = None
        self.integrity_restarts = 0
        self.last_integrity_restart: str | None = None
        # The timeout of the cold load in progress, and the key that sets it (for the error message).
        self._timeout_s, self._timeout_key = self.load_timeout_s, "load_timeout_s"
        # Set when the engine writes a line (`engine_wrote`): the readiness loop then checks again at once.
        self._wrote = asyncio.Event()

    def _set(self, state: ModelState) -> None:
        self.state = state
        self.since = time.time()

    def engine_wrote(self) -> None:
        """The engine wrote a line of output (its process's, or its unit's journal). Engines say when they become
        ready ("server is listening", "Application startup complete"), so a load in progress checks its readiness
        again now instead of at its next poll, up to POLL_MAX_S later."""
        self._wrote.set()

    @property
    def load_timeout_s(self) -> float:
        return self.model.load_timeout_s or self._settings.load_timeout_s

    @property
    def first_load_timeout_s(self) -> float:
        """A first load compiles and downloads what later loads find cached (JIT kernels, torch.compile, CUDA graphs,
        Hugging Face files): it may take this long (never less than load_timeout_s)."""
        first = self.model.first_load_timeout_s or self._settings.first_load_timeout_s
        return max(first, self.load_timeout_s)

    def info(self) -> dict[str, object]:
        """State for /health and /running."""
        data: dict[str, object] = {
            "state": self.state.value,
            "since": round(self.since, 3),
            "backend": self.model.backend.value,
        }
        if self.supervisor is not None:
            data["supervisor"] = self.supervisor.description
        if self.socket:
            data["socket"] = self.socket
        elif self.port:
            data["port"] = self.port
        if self.load_seconds is not None:
            data["last_load_s"] = round(self.load_seconds, 3)
        if self.last_error:
            data["last_error"] = self.last_error
        if self.last_eviction:
            data["last_eviction"] = self.last_eviction
        if self.last_failure:
            data["last_failure"] = self.last_failure
        if self.slots is not None:
            data["kv"] = {"dir": str(self.slots.directory.path), **self.kv}
        if self.integrity_restarts:
            data["wake_integrity_restarts"] = self.integrity_restarts
            data["last_wake_integrity_restart"] = self.last_integrity_restart
        return data

    def record_failure(self, failure: LoadFailure, reason: str) -> None:
        """A load failed: `last_error` (the text) and `last_failure` (typed, with the time) in /health."""
        self.last_error = reason
        self.last_failure = {"cause": failure.value, "reason": reason, "at": round(time.time(), 3)}

    async def activate(self, first_load: bool = False) -> None:
        """Make the engine ready to serve: start it, or wake it if it sleeps.

        first_load: the engine has never loaded this model as configured (no load in the router's history for its
        revision): a cold start may take first_load_timeout_s.
        """
        if self.supervisor is None or self.state is ModelState.READY:
            return
        started = time.monotonic()
        waking = self.state is ModelState.SLEEPING
        if first_load and not waking:
            self._timeout_s, self._timeout_key = self.first_load_timeout_s, "first_load_timeout_s"
        else:
            self._timeout_s, self._timeout_key = self.load_timeout_s, "load_timeout_s"
        deadline = started + self._timeout_s
        try:
            if waking:
                self._set(ModelState.STARTING)
                await self._race_exit(self.adapter.wake(), deadline)
                await self._wait_ready(deadline)
                await self._check_wake_integrity()
            else:
                if self.state is ModelState.FAILED:
                    await self._stop_supervisor()  # an engine marked unreachable may still be running
                self._set(ModelState.STARTING)
                await self._launch()
                await self._wait_ready(deadline, cold=True)
                await self._record_fingerprint()
                await self._restore_slots()
        except (SwitchError, SupervisorError, EngineError, OSError) as exc:
            reason = str(exc) if isinstance(exc, SwitchError) else f"{self.model.id}: {exc}"
            if isinstance(exc, SwitchError):
                failure = exc.failure
            else:
                failure = LoadFailure.ENGINE_ERROR if isinstance(exc, EngineError) else LoadFailure.START_FAILED
            await self._cleanup_after_failure()
            self.record_failure(failure, reason)
            self._set(ModelState.FAILED)
            raise SwitchError(reason, failure) from None
        except BaseException:
            await self._cleanup_after_failure()
            self._set(ModelState.FAILED)
            raise
        self.load_seconds = time.monotonic() - started
        self.last_error = None
        self._set(ModelState.READY)
        log.info("model %s ready in %.2f s (%s)", self.model.id, self.load_seconds, self.supervisor.description)

    async def _launch(self) -> None:
        assert self.supervisor is not None
        argv = None
        if self.model.command:
            values = {"HOST": self.model.host, "MODEL_ID": self.model.id, "SERVED_NAME": self.model.engine_name}
            if self.model.on_socket:
                self.socket = self._sockets.ready_path(self.socket)
                self.adapter.use_socket(self.socket)
                values["SOCKET"] = self.socket
            else:
                if self.model.port is None:
                    self.port = free_port(self.model.host)
                self.adapter.set_port(self.port or 0)
                values["PORT"] = str(self.port)
            if self.slots is not None:
                await self.slots.prepare()
                values["SLOT_DIR"] = str(self.slots.directory.path)
            argv = expand(self.model.command, values)
        await self.supervisor.start(argv, self.model.env)
        self._watch = asyncio.create_task(self._watch_exit(self.supervisor), name=f"exit-{self.model.id}")

    async def _watch_exit(self, supervisor: Supervisor) -> None:
        how = await supervisor.wait_exit()
        if self.state in (ModelState.READY, ModelState.SLEEPING):
            self.last_error = f"engine {how}"
            self._set(ModelState.FAILED)
            if self.on_lost is not None:
                self.on_lost(self.model.id, how)

    async def _race_exit(self, step: Awaitable[T], deadline: float) -> T:
        """Await `step`, but give up as soon as the engine dies or the deadline passes."""
        assert self._watch is not None or self.supervisor is not None
        exit_task = self._watch
        step_task = asyncio.ensure_future(step)
        waiting: set[asyncio.Future[object]] = {step_task}
        if exit_task is not None:
            waiting.add(exit_task)
        remaining = deadline - time.monotonic()
        done, _ = await asyncio.wait(waiting, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        if step_task in done:
            return step_task.result()
        step_task.cancel()
        with contextlib.suppress(BaseException):
            await step_task
        if exit_task is not None and exit_task.done():
            raise SwitchError(await self._died_message(), LoadFailure.EXITED)
        raise SwitchError(
            await self._with_logs(
                f"{self.model.id} did not become ready within {self._timeout_s:.0f} s ({self._timeout_key})"
            ),
            LoadFailure.TIMEOUT,
        )

    async def _died_message(self) -> str:
        assert self.supervisor is not None
        how = await self.supervisor.wait_exit()
        return await self._with_logs(f"{self.model.id}: engine {how} while loading")

    async def _with_logs(self, message: str) -> str:
        """`message` and the engine's last log lines, with its keys blanked: the text reaches clients and
        peers (`status.error`), and SGLang logs its server_args, key included, at start."""
        assert self.supervisor is not None
        lines = await self.supervisor.recent_logs(12)
        if not lines:
            return message
        return message + "; last log lines:\n" + self.redact("\n".join(lines))

    def redact(self, text: str) -> str:
        """`text` with the engine's keys blanked (before it reaches a client, a peer or the console)."""
        for secret in self.adapter.secrets():
            text = text.replace(secret, "***")
        return text

    async def _wait_ready(self, deadline: float, cold: bool = False) -> None:
        """Health, then a 1-token greedy probe, and after a cold start one sampled request (engines.SAMPLED_PROBE)."""
        delay = POLL_FIRST_S
        checks = [self.adapter.health]
        if not self.adapter.health_means_loaded:
            checks.append(self.adapter.probe_generation)
        if cold and self.adapter.samples_on_load:
            checks.append(self.adapter.probe_sampled)
        for check in checks:
            while True:
                self._wrote.clear()
                if await self._race_exit(check(), deadline) is Health.READY:
                    break
                if not await self._race_exit(self._output_within(delay), deadline):
                    delay = min(delay * 1.5, POLL_MAX_S)

    async def _output_within(self, seconds: float) -> bool:
        """Whether the engine writes a line within `seconds` (returns as soon as it does)."""
        try:
            async with asyncio.timeout(seconds):
                await self._wrote.wait()
        except TimeoutError:
            return False
        return True

    @property
    def may_sleep(self) -> bool:
        return self.model.evict == "sleep" and self.adapter.supports_sleep

    async def _take_fingerprint(self) -> str | None:
        """The adapter's fingerprint, or None (logged) if it cannot be had; only a dead engine raises."""
        try:
            return await self._race_exit(self.adapter.fingerprint(), time.monotonic() + FINGERPRINT_DEADLINE_S)
        except (EngineError, OSError) as exc:
            log.warning(
                "model %s: wake-integrity probe failed (%s); treating the fingerprint as unknown", self.model.id, exc
            )
            return None

    async def _record_fingerprint(self) -> None:
        """At a cold load of a model that may sleep: remember the probe's answer if it is deterministic."""
        self.fingerprint = None
        if not self.may_sleep:
            return
        first = await self._take_fingerprint()
        if first is None:
            return
        second = await self._take_fingerprint()
        if second != first:
            if second is not None:
                log.warning(
                    "model %s answers the wake-integrity probe differently on a cold engine (%r, then %r): "
                    "fingerprint unknown, wakes are not checked",
                    self.model.id,
                    first,
                    second,
                )
            return
        self.fingerprint = first

    async def _check_wake_integrity(self) -> None:
        """After a wake: the probe must answer as at the cold load, else restart the engine cold."""
        expected = self.fingerprint
        if expected is None:
            log.info("model %s woke; wake-integrity fingerprint unknown, not checked", self.model.id)
            return
        got = await self._take_fingerprint()
        if got is None or got == expected:
            return
        # One more try before a restart: a near-tie token may flip once; other weights never match.
        if await self._take_fingerprint() == expected:
            log.info("model %s: wake-integrity probe answered %r once, then as expected", self.model.id, got)
            return
        reason = f"woke with different weights: the wake-integrity probe expected {expected!r}, got {got!r}"
        log.warning("model %s: %s; restarting the engine cold", self.model.id, reason)
        self.integrity_restarts += 1
        self.last_integrity_restart = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}"
        if self._metrics is not None:
            self._metrics.wake_integrity_restarts.labels(self.model.id).inc()
        await self._stop_supervisor()
        await self._launch()
        self._timeout_s, self._timeout_key = self.load_timeout_s, "load_timeout_s"
        await self._wait_ready(time.monotonic() + self.load_timeout_s, cold=True)
        await self._record_fingerprint()

    async def deactivate(self, stop: bool = False) -> None:
        """Free the GPU: sleep where the model is configured for it and the engine can (unless `stop`), else stop."""
        if self.supervisor is None or self.state is ModelState.STOPPED:
            return
        if not stop and self.may_sleep and self.state is ModelState.READY:
            try:
                await self.adapter.sleep()
                self._set(ModelState.SLEEPING)
                return
            except (EngineError, OSError) as exc:
                log.warning("model %s could not sleep (%s); stopping it instead", self.model.id, exc)
        if self.state is ModelState.FAILED:
            # Leftovers of a failed start or a crash: make sure nothing runs, but keep showing the failure.
            await self._stop_supervisor()
            return
        self._set(ModelState.STOPPING)
        stopping = time.monotonic()
        await self._save_slots()
        await self._stop_supervisor()
        self._set(ModelState.STOPPED)
        log.info("model %s stopped in %.3f s", self.model.id, time.monotonic() - stopping)

    async def _stop_supervisor(self) -> None:
        assert self.supervisor is not None
        try:
            await self.supervisor.stop()
        finally:
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(BaseException):
                    await self._watch
                self._watch = None

    async def _cleanup_after_failure(self) -> None:
        with contextlib.suppress(Exception):
            await self._stop_supervisor()

    @property
    def progress(self) -> float | None:
        """Engine-reported load progress (0..1) while starting, where the engine gives one."""
        return self.adapter.load_progress() if self.state is ModelState.STARTING else None

    def mark_stopped(self) -> None:
        """After a cancelled load (its cleanup already stopped the engine): stopped, not failed."""
        self.last_error = None
        self._set(ModelState.STOPPED)

    async def inspect(self, slept: SleepRecord) -> ModelState | None:
        """At router start: what an engine that already runs (systemd units) is: READY, SLEEPING, or None (not
        running, not healthy, or a sleeper whose state nobody knows; those are stopped). Changes nothing.

        An engine that may sleep is asked whether it sleeps (vLLM /is_sleeping, TabbyAPI without a model). Where it
        cannot say (SGLang), the router's record decides: the PID it put to sleep still runs, so it still sleeps; no
        PID recorded in a history that records sleeps, so it is awake. A sleeping engine is never health-checked:
        SGLang's /health generates a token, on memory it released (engine-audit-2 #6).
        """
        if self.supervisor is None or not await self.supervisor.is_running():
            return None
        asleep: bool | None = None
        if self.may_sleep:
            try:
                asleep = await self.adapter.asleep()
            except (EngineError, httpx.HTTPError) as exc:
                log.warning("model %s: cannot tell whether it sleeps (%s)", self.model.id, exc)
            if asleep is None and slept.pid is not None:
                asleep = slept.pid in await self.supervisor.pids()
            elif asleep is None and not slept.known:
                log.warning(
                    "model %s is running, may be asleep, and neither it nor the router's history can say "
                    "(no state_dir, or written by an older router): stopping it rather than probing it",
                    self.model.id,
                )
                return None
        if asleep:
            return ModelState.SLEEPING
        try:
            healthy = await self.adapter.health() is Health.READY
        except EngineError:
            healthy = False
        return ModelState.READY if healthy else None

    def take_over(self, state: ModelState, fingerprint: str | None = None) -> None:
        """Adopt the running engine as `state` (inspect's answer); `fingerprint`: its wake-integrity probe answer as
        recorded when it went to sleep, so its next wake is checked too."""
        assert self.supervisor is not None
        self._watch = asyncio.create_task(self._watch_exit(self.supervisor), name=f"exit-{self.model.id}")
        self.fingerprint = fingerprint if state is ModelState.SLEEPING else None
        self._set(state)
        asleep = " asleep" if state is ModelState.SLEEPING else ""
        log.info("model %s was already running (%s)%s: adopted", self.model.id, self.supervisor.description, asleep)

    async def shutdown(self) -> None:
        """Stop the engine when the router exits (process supervisor only: units stay as they are)."""
        if self.supervisor is not None and self.state is not ModelState.STOPPED:
            self._set(ModelState.STOPPING)
            with contextlib.suppress(Exception):
                await self._stop_supervisor()
            self._set(ModelState.STOPPED)

    # --- KV continuity -----------------------------------------------------------------

    async def _save_slots(self) -> None:
        """Before a stop: save the engine's slots, within kv_save_timeout_s; a failure only costs the next load its
        restore."""
        await self._kv_step("saved", self._settings.kv_save_timeout_s, lambda keeper, engine: keeper.save(engine))

    async def _restore_slots(self) -> None:
        """After a cold load, before anyone is granted the engine: restore its saved slots, within
        kv_restore_timeout_s; a failure only costs the next request its prefill."""
        report = await self._kv_step(
            "restored", self._settings.kv_restore_timeout_s, lambda keeper, engine: keeper.restore(engine)
        )
        self._restored_tokens = report.tokens if report is not None and report.tokens else None

    async def _kv_step(
        self,
        what: str,
        timeout_s: float,
        step: Callable[[SlotKeeper, SlotEngine], Awaitable[SlotReport]],
    ) -> SlotReport | None:
        if self.slots is None or not isinstance(self.adapter, SlotEngine):
            return None
        action = "save" if what == "saved" else "restore"
        try:
            async with asyncio.timeout(timeout_s):
                report = await step(self.slots, self.adapter)
        except Exception as exc:  # fail open, whatever went wrong: the switch goes on without its slots
            reason = f"timed out after {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
            if not isinstance(exc, TimeoutError | EngineError | OSError):
                reason = f"{type(exc).__name__}: {reason}"
            outcome = "timeout" if isinstance(exc, TimeoutError) else "failed"
            self.kv["last_error"] = {"action": action, "reason": reason, "at": round(time.time(), 3)}
            log.warning("model %s: KV slots not %s: %s", self.model.id, what, reason)
            if self._metrics is not None:
                self._metrics.kv_done(self.model.id, action, outcome, None)
            return None
        self.kv[what] = report.summary()
        if report.slots:
            log.info(
                "model %s: %s %d slot(s), %d tokens, %d bytes in %.0f ms",
                self.model.id,
                what,
                report.slots,
                report.tokens,
                report.bytes,
                report.seconds * 1000,
            )
        if self._metrics is not None:
            self._metrics.kv_done(self.model.id, action, "ok", report)
        return report

    def observe_prompt_cache(self, prompt_tokens: int, cached_tokens: int) -> None:
        """An answer's prompt and cached-prompt tokens, as the engine counted them: the first answer after a restore
        says whether the engine reused what was restored (llama.cpp #26676: a restore the engine then ignores)."""
        restored, self._restored_tokens = self._restored_tokens, None
        if restored is None:
            return
        self.kv["reused"] = {"restored": restored, "prompt": prompt_tokens, "cached": cached_tokens}
        if self._metrics is not None:
            self._metrics.kv_reused.labels(self.model.id).inc(cached_tokens)
        if cached_tokens < min(restored, prompt_tokens) // 2:
            log.warning(
                "model %s: the first answer after restoring %d tokens reused %d of its %d prompt tokens (another "
                "conversation, or the engine ignored the restore)",
                self.model.id,
                restored,
                cached_tokens,
                prompt_tokens,
            )

    async def close(self) -> None:
        """Release what the instance holds besides its engine (a Unix-socket client); it is not used again."""
        await self.adapter.aclose()
