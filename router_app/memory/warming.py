"""Page-cache warming: keep the weight files of recently used models in the kernel's page cache, within a RAM
budget, and read a newcomer's files the moment its load is decided (while its victims drain), so that its engine
reads them from memory instead of disk.

One background task reads; it reads only the chunks that are not cached (pagecache.chunk_cached), in large
sequential chunks, and

- yields to loads: no read starts while an engine load is in progress (the engine's own reads come first);
- backs off under memory pressure (MemAvailable under a reserve, or memory stalls in /proc/pressure/memory);
- reads the newcomer's files first, then those of the most recently used models, as many as fit in the budget.

`plan` (pure) chooses what to keep warm; `PageCacheWarmer` does the I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from router_app.config import ModelConfig
from router_app.memory.estimate import command_option, weights_of
from router_app.memory.pagecache import PAGE, chunk_cached, weight_files
from router_app.metrics import RouterMetrics

log = logging.getLogger(__name__)

CHUNK = 16 * 1024**2  # one read; a load waits for at most one of these to finish
RECHECK_S = 60.0  # how often the kept-warm files are checked again (pages other work pushed out)
# A file whose file system cannot say what is cached is read again for a model kept warm at most this often (a
# newcomer's files are always read).
BLIND_REREAD_S = 600.0
BACKOFF_S = (1.0, 30.0)  # under memory pressure: first and longest wait before trying again
PRESSURE_STALL_PCT = 10.0  # /proc/pressure/memory `some avg10` above this counts as pressure


@dataclass(frozen=True)
class Candidate:
    """A model whose files could be kept warm: its total size, when it was last asked for (None: never), and whether
    its load has been decided (a newcomer waiting for its victims to leave, or loading)."""

    model: str
    size: int
    last_used: float | None = None
    wanted: bool = False


def plan(candidates: Sequence[Candidate], budget: int) -> list[str]:
    """The models whose files to keep warm, in reading order: newcomers first, then the most recently used; each
    taken if it fits in what is left of the budget (a model that does not fit is skipped, a smaller one may follow).
    Models never asked for are not warmed."""
    ranked = sorted(
        (c for c in candidates if c.wanted or c.last_used is not None),
        key=lambda c: (not c.wanted, -(c.last_used or 0.0), c.model),
    )
    chosen: list[str] = []
    left = budget
    for candidate in ranked:
        if candidate.size <= left:
            chosen.append(candidate.model)
            left -= candidate.size
    return chosen


def warm_files(model: ModelConfig) -> list[Path]:
    """The files to keep warm for a model: its weight files, unless it is remote, opted out (`page_cache: false`)
    or read past the page cache (llama.cpp `--load-mode dio`, b11312 src/llama-mmap.cpp: O_DIRECT)."""
    if not model.local or not model.page_cache:
        return []
    mode = command_option(model.command or [], "-lm", "--load-mode") or model.env.get("LLAMA_ARG_LOAD_MODE")
    if mode == "dio":
        return []
    path = weights_of(model)
    return weight_files(path) if path is not None else []


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, …)."""
    values: dict[str, int] = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def read_stall_pct() -> float | None:
    """`some avg10` of /proc/pressure/memory (share of the last 10 s some task waited for memory), if the kernel has
    PSI."""
    try:
        with open("/proc/pressure/memory") as pressure:
            first = pressure.readline().split()
    except OSError:
        return None
    fields = dict(item.split("=", 1) for item in first[1:] if "=" in item)
    return float(fields["avg10"]) if "avg10" in fields else None


def auto_budget(meminfo: dict[str, int]) -> int:
    """The default budget: half of the memory available when the router starts."""
    return meminfo.get("MemAvailable", 0) // 2


@dataclass
class WarmStats:
    """What the warmer did, for /health and the metrics."""

    read_bytes: int = 0
    reads: int = 0
    backoffs: int = 0
    last_error: str | None = None
    # Reads that started while an engine load was in progress: 0 unless yielding to loads is broken (tests).
    reads_during_loads: int = 0


class PageCacheWarmer:
    """Reads models' weight files into the page cache in the background; see the module docstring."""

    def __init__(
        self,
        budget: int,
        *,
        chunk: int = CHUNK,
        meminfo: Callable[[], dict[str, int]] = read_meminfo,
        stall_pct: Callable[[], float | None] = read_stall_pct,
        clock: Callable[[], float] = time.monotonic,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.budget = budget
        self._metrics = metrics
        self.chunk = chunk
        self._meminfo = meminfo
        self._stall_pct = stall_pct
        self._clock = clock
        self.files: dict[str, list[Path]] = {}
        self.sizes: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.wanted: set[str] = set()
        self.stats = WarmStats()
        self._loads = 0
        self._no_load = asyncio.Event()
        self._no_load.set()
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Files on a file system that cannot say what is cached (RWF_NOWAIT unsupported): when each was last read.
        self._blind_reads: dict[Path, float] = {}

    # --- what the switcher tells it -------------------------------------------------------

    def set_models(self, files: dict[str, list[Path]]) -> None:
        """The models to consider and their weight files (at start and after a config reload)."""
        self.files = {model: paths for model, paths in files.items() if paths}
        self.sizes = {model: sum(_size(p) for p in paths) for model, paths in self.files.items()}
        self._work.set()

    def touch(self, model: str) -> None:
        """A request asked for `model`."""
        self.last_used[model] = self._clock()

    def newcomers(self, models: set[str]) -> None:
        """The models whose load is decided now (waiting for their victims, or loading): their files are read first,
        and nothing else is read until their loads end."""
        models = {model for model in models if model in self.files}
        if models - self.wanted:
            for model in models - self.wanted:
                self.touch(model)
            self._work.set()
        elif self.wanted - models:
            self._work.set()  # the loads ended: back to keeping the others warm
        self.wanted = models

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Around an engine load: no read starts meanwhile."""
        self._loads += 1
        self._no_load.clear()
        try:
            yield
        finally:
            self._loads -= 1
            if self._loads == 0:
                self._no_load.set()
                self._work.set()

    # --- the reading task -----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._run())
            self._task.set_name("page-cache-warmer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def chosen(self) -> list[str]:
        candidates = [
            Candidate(m, self.sizes[m], self.last_used.get(m), m in self.wanted) for m in self.files if m in self.sizes
        ]
        return plan(candidates, self.budget)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK_S):  # not wait_for: in 3.11 it can swallow a cancellation
                    await self._work.wait()
            self._work.clear()
            try:
                await self._warm_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # warming is an optimisation: it never takes the router down
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("page-cache warming: %s", self.stats.last_error)

    async def _warm_all(self) -> None:
        """One pass over the plan. While loads are decided only their newcomers are read (`_warm_file` stops at
        another model); a change of newcomers sets `_work`, and the next pass plans again."""
        for model in self.chosen():
            for path in self.files.get(model, []):
                if not await self._warm_file(model, path):
                    return

    async def _warm_file(self, model: str, path: Path) -> bool:
        """Read the file's chunks that are not cached; False when a newcomer came that is more urgent than `model`."""
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except OSError as exc:
            self.stats.last_error = f"{path}: {exc.strerror or exc}"
            return True
        urgent = model in self.wanted
        sink = os.open(os.devnull, os.O_WRONLY)
        probe = bytearray(PAGE)
        try:
            size = os.fstat(fd).st_size
            cached: bool | None = True
            for offset in range(0, size, self.chunk):
                length = min(self.chunk, size - offset)
                await self._no_load.wait()  # even a probe may start the kernel's readahead
                if not urgent and self.wanted:
                    return False
                cached = chunk_cached(fd, offset, length, probe)
                if cached is None and not urgent and self._read_lately(path):
                    return True  # the file system cannot tell what is cached: read it now and then only
                if cached:
                    continue
                await self._may_read()
                if not urgent and self.wanted:
                    return False
                if self._loads:
                    self.stats.reads_during_loads += 1
                read = await asyncio.to_thread(_read_into_cache, fd, sink, offset, length)
                self.stats.read_bytes += read
                if self._metrics is not None:
                    self._metrics.page_cache_read.labels(model).inc(read)
                self.stats.reads += 1
            if cached is None:
                self._blind_reads[path] = self._clock()
        finally:
            os.close(sink)
            os.close(fd)
        return True

    def _read_lately(self, path: Path) -> bool:
        last = self._blind_reads.get(path)
        return last is not None and self._clock() - last < BLIND_REREAD_S

    async def _may_read(self) -> None:
        """Wait while an engine loads and while memory is under pressure (with a growing back-off)."""
        backoff = BACKOFF_S[0]
        while True:
            await self._no_load.wait()
            if not self._under_pressure():
                return
            self.stats.backoffs += 1
            if self._metrics is not None:
                self._metrics.page_cache_backoffs.inc()
            await asyncio.sleep(backoff)  # pressure has no event to wait for: look again later
            backoff = min(backoff * 2, BACKOFF_S[1])

    def _under_pressure(self) -> bool:
        meminfo = self._meminfo()
        total, available = meminfo.get("MemTotal", 0), meminfo.get("MemAvailable", 0)
        if total and available - self.chunk < total // 10:
            return True
        stall = self._stall_pct()
        return stall is not None and stall > PRESSURE_STALL_PCT

    def status(self) -> dict[str, object]:
        """For /health."""
        return {
            "budget": self.budget,
            "kept_warm": self.chosen() if self.enabled else [],
            "read_bytes": self.stats.read_bytes,
            "reads": self.stats.reads,
            "reads_during_loads": self.stats.reads_during_loads,
            "backoffs": self.stats.backoffs,
            "last_error": self.stats.last_error,
        }


def _read_into_cache(fd: int, sink: int, offset: int, length: int) -> int:
    """Read a range of the file into the page cache. sendfile(2) to /dev/null reads through the page cache like
    read(2) but copies nothing to user space: a tenth of the CPU of preadv for the same 3.8 GB (measured here),
    which matters on a host whose cores are generating for the victim meanwhile. Then one byte of each page is read
    (`_touch`): sendfile leaves the data untouched by any CPU, and in a virtual machine the first CPU access to
    pages the disk filled is dear; left to the newcomer, it doubled the CPU time of its load (0.9 → 1.8-2.3 s of
    llama-server's user time, its first token 1.25 s instead of 0.55-0.75 s, in 7 of 14 switches on this VM;
    0 of 16 with the touch or with preadv; docs/benchmark-history.md)."""
    done = 0
    while done < length:
        sent = os.sendfile(sink, fd, offset + done, length - done)
        if sent == 0:  # end of file (it shrank)
            break
        done += sent
    _touch(fd, offset, done)
    return done


def _touch(fd: int, offset: int, length: int) -> None:
    """Read one byte of every page of a range of the file through a read-only mapping (0.2-0.3 s of CPU for 3.8 GB
    just read, against 1.5-3.5 s to copy it all with preadv)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    # Never past the file's end as it is now: mmap refuses that, and a mapped page beyond it is SIGBUS.
    end = min(offset + length, os.fstat(fd).st_size)
    if end <= offset:
        return
    with mmap.mmap(fd, end - start, offset=start, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        bytes(view[offset - start :: PAGE])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
