"""Page-cache warming: the pure plan (properties), the page cache helpers on real files, and the warmer's rules
(yield to loads, back off under pressure, newcomers first) with a real file and a fake /proc/meminfo."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_app.config import ModelConfig
from router_app.memory.pagecache import PAGE, chunk_cached, drop, resident_bytes, resident_pages, weight_files
from router_app.memory.warming import Candidate, PageCacheWarmer, _read_into_cache, plan, warm_files

MiB = 1024**2
pytestmark = pytest.mark.anyio

candidates = st.lists(
    st.builds(
        Candidate,
        model=st.sampled_from([f"m{i}" for i in range(8)]),
        size=st.integers(0, 100),
        last_used=st.none() | st.floats(0, 1000),
        wanted=st.booleans(),
    ),
    unique_by=lambda c: c.model,
)


@given(candidates, st.integers(0, 300))
def test_the_plan_fits_the_budget_puts_newcomers_first_and_skips_only_what_does_not_fit(
    models: list[Candidate], budget: int
) -> None:
    chosen = plan(models, budget)
    by_name = {c.model: c for c in models}
    assert sum(by_name[m].size for m in chosen) <= budget
    assert all(by_name[m].wanted or by_name[m].last_used is not None for m in chosen), "never used: not warmed"
    wanted = [by_name[m].wanted for m in chosen]
    assert wanted == sorted(wanted, reverse=True), "newcomers are read first"
    recency = [by_name[m].last_used or 0.0 for m in chosen if not by_name[m].wanted]
    assert recency == sorted(recency, reverse=True), "then the most recently used"
    left = budget - sum(by_name[m].size for m in chosen)
    for candidate in models:
        eligible = candidate.wanted or candidate.last_used is not None
        if eligible and candidate.model not in chosen:
            assert candidate.size > left, f"{candidate.model} fits in what is left but was skipped"


def test_a_newcomer_comes_before_a_more_recent_model_and_a_big_one_gives_way_to_smaller_ones() -> None:
    models = [
        Candidate("recent", 60, last_used=10.0),
        Candidate("older", 30, last_used=5.0),
        Candidate("newcomer", 50, last_used=1.0, wanted=True),
        Candidate("never", 1),
    ]
    assert plan(models, 100) == ["newcomer", "older"]  # recent (60) no longer fits in 50, older (30) does


def test_a_chunk_reads_as_cached_only_once_its_pages_are(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(4 * MiB))
    drop(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        probe = bytearray(PAGE)
        assert not chunk_cached(fd, 2 * MiB, 2 * MiB, probe)
        os.pread(fd, 2 * MiB, 2 * MiB)
        assert chunk_cached(fd, 2 * MiB, 2 * MiB, probe)
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to probe as another user")
def test_the_probe_tells_the_truth_to_a_user_that_may_not_write_the_file_where_mincore_does_not() -> None:
    """Linux 5.0+ mm/mincore.c: for a file the caller may not write, mincore says every page is cached. The router's
    user only reads the weights: the warmer must not believe it."""
    directory = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        path = directory / "weights.gguf"
        path.write_bytes(os.urandom(4 * MiB))
        path.chmod(0o644)
        drop(path)
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:  # as nobody, with the modules already imported
            try:
                os.setgid(65534)
                os.setuid(65534)
                fd = os.open(path, os.O_RDONLY)
                answer = f"{resident_bytes(path)} {chunk_cached(fd, 0, 4 * MiB, bytearray(PAGE))}"
                os.write(writer, answer.encode())
            finally:
                os._exit(0)
        os.close(writer)
        os.waitpid(child, 0)
        resident, cached = os.read(reader, 100).decode().split()
        os.close(reader)
        assert int(resident) == 4 * MiB, "mincore (Linux 5.0+) says a file this user may not write is cached"
        assert cached == "False", "the RWF_NOWAIT probe sees it is not"
    finally:
        shutil.rmtree(directory)


def test_weight_files_of_a_split_gguf_a_directory_and_a_missing_path(tmp_path: Path) -> None:
    parts = [tmp_path / f"big-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
    for part in parts:
        part.write_bytes(b"x")
    assert weight_files(parts[0]) == parts
    directory = tmp_path / "exl3"
    (directory / "sub").mkdir(parents=True)
    for name in ("model-00002.safetensors", "model-00001.safetensors", "sub/extra.bin", "config.json"):
        (directory / name).write_bytes(b"x")
    assert [p.relative_to(directory).as_posix() for p in weight_files(directory)] == [
        "model-00001.safetensors",
        "model-00002.safetensors",
        "sub/extra.bin",
    ]
    assert weight_files(tmp_path / "nope.gguf") == []


def test_drop_empties_the_page_cache_of_a_file_and_reading_fills_it(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(64 * MiB))
    drop(path)
    assert resident_bytes(path) < MiB
    with open(path, "rb") as file:
        file.read(4 * MiB)
    assert 4 * MiB <= resident_bytes(path) < 32 * MiB  # the kernel reads ahead (read_ahead_kb, 8 MiB here)
    assert resident_pages(path)[:10] == b"\x01" * 10


def test_a_read_chunk_is_touched_by_the_cpu_not_only_cached(tmp_path: Path) -> None:
    """sendfile(2) to /dev/null fills the page cache without any CPU reading the data, and in a VM the newcomer then
    paid that first access in its load (twice its CPU time, docs/benchmark-history.md). The warmer reads one byte of
    each page through a mapping: it takes the page faults on the range itself (sendfile alone takes none)."""
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(64 * MiB))
    drop(path)
    fd, sink = os.open(path, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        read = sum(_read_into_cache(fd, sink, offset, 4 * MiB) for offset in range(0, 64 * MiB, 4 * MiB))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        os.close(fd)
        os.close(sink)
    assert read == 64 * MiB and resident_bytes(path) == 64 * MiB
    assert faults >= 64 * MiB // (2 * MiB), f"{faults} page faults: the range was not read through a mapping"


def test_touching_a_file_cut_meanwhile_maps_only_what_is_left(tmp_path: Path) -> None:
    """A weight file truncated while the warmer reads it: the touch maps the range only up to the file's end as it
    is now (Python refuses to map past it, and a mapped page past it is SIGBUS, which ends the process: run in a
    child so that a regression fails this test, not the test run)."""
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(4 * MiB))
    script = (
        "import os, sys\n"
        "from router_app.memory.warming import _read_into_cache, _touch\n"
        "fd, sink = os.open(sys.argv[1], os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)\n"
        "os.truncate(sys.argv[1], 1024 * 1024 + 100)\n"
        "_touch(fd, 0, 4 * 1024 * 1024)\n"
        "_touch(fd, 2 * 1024 * 1024, 1024 * 1024)\n"
        "print(_read_into_cache(fd, sink, 0, 4 * 1024 * 1024))\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, (child.returncode, child.stderr[-500:])
    assert child.stdout.strip() == str(1024 * 1024 + 100)


def test_warm_files_skip_remote_opted_out_and_direct_io_models(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")

    def model(*extra: str, **fields: object) -> ModelConfig:
        command = ["llama-server", "-m", str(gguf), "--port", "${PORT}", *extra]
        return ModelConfig.model_validate({"id": "m", "backend": "llamacpp", "command": command, **fields})

    assert warm_files(model()) == [gguf]
    assert warm_files(model("--load-mode", "none")) == [gguf]
    assert warm_files(model("--load-mode", "dio")) == []
    assert warm_files(model("-lm", "dio")) == []
    assert warm_files(model(env={"LLAMA_ARG_LOAD_MODE": "dio"})) == []
    assert warm_files(model(page_cache=False)) == []
    remote = ModelConfig.model_validate({"id": "r", "backend": "openai", "url": "http://x/v1", "weights": str(gguf)})
    assert warm_files(remote) == []


def plenty() -> dict[str, int]:
    return {"MemTotal": 64 * 1024 * MiB, "MemAvailable": 32 * 1024 * MiB}


@pytest.fixture
def cold_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.gguf"
    path.write_bytes(os.urandom(16 * MiB))
    drop(path)
    return path


async def until(condition) -> None:
    """Poll with backoff; the bound only guards a hang."""
    async with asyncio.timeout(30):
        delay = 0.001
        while not condition():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextlib.asynccontextmanager
async def warming(path: Path, budget: int = 64 * MiB, meminfo=plenty, stall_pct=lambda: None):
    """A started warmer whose one model `b` is the file at `path`; stopped at the end."""
    warmer = PageCacheWarmer(budget, chunk=MiB, meminfo=meminfo, stall_pct=stall_pct)
    warmer.set_models({"b": [path]})
    warmer.start()
    try:
        yield warmer
    finally:
        await warmer.stop()


async def test_a_wanted_newcomer_is_read_into_the_page_cache(cold_file: Path) -> None:
    async with warming(cold_file) as warmer:
        warmer.newcomers({"b"})
        await until(lambda: resident_bytes(cold_file) >= 16 * MiB)
        assert warmer.stats.reads > 0  # some of it the kernel's readahead brought in after the warmer's reads


async def test_no_read_starts_while_an_engine_loads(cold_file: Path) -> None:
    async with warming(cold_file) as warmer:
        with warmer.loading():
            warmer.newcomers({"b"})
            for _ in range(50):
                await asyncio.sleep(0.002)
            assert warmer.stats.reads == 0 and resident_bytes(cold_file) < MiB
        await until(lambda: resident_bytes(cold_file) >= 16 * MiB)
        assert warmer.stats.reads_during_loads == 0


async def test_memory_pressure_makes_it_wait_and_it_reads_once_memory_is_back(
    cold_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("router_app.memory.warming.BACKOFF_S", (0.01, 0.02))
    meminfo = {"MemTotal": 1000 * MiB, "MemAvailable": 50 * MiB}  # under a tenth: pressure
    async with warming(cold_file, meminfo=lambda: meminfo) as warmer:
        warmer.newcomers({"b"})
        await until(lambda: warmer.stats.backoffs >= 3)
        assert warmer.stats.reads == 0
        meminfo["MemAvailable"] = 500 * MiB
        await until(lambda: resident_bytes(cold_file) >= 16 * MiB)


async def test_memory_stalls_count_as_pressure(cold_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("router_app.memory.warming.BACKOFF_S", (0.01, 0.02))
    stall = [50.0]
    async with warming(cold_file, stall_pct=lambda: stall[0]) as warmer:
        warmer.newcomers({"b"})
        await until(lambda: warmer.stats.backoffs >= 2)
        assert warmer.stats.reads == 0
        stall[0] = 0.0
        await until(lambda: resident_bytes(cold_file) >= 16 * MiB)


async def test_a_model_over_the_budget_is_not_read(cold_file: Path) -> None:
    async with warming(cold_file, budget=8 * MiB) as warmer:
        warmer.newcomers({"b"})
        for _ in range(50):
            await asyncio.sleep(0.002)
        assert warmer.stats.reads == 0 and warmer.chosen() == []


async def test_a_newcomer_interrupts_keeping_another_model_warm(tmp_path: Path) -> None:
    old, new = tmp_path / "old.gguf", tmp_path / "new.gguf"
    old.write_bytes(os.urandom(64 * MiB))
    new.write_bytes(os.urandom(8 * MiB))
    drop(old)
    drop(new)

    def slow_plenty() -> dict[str, int]:  # each read looks at memory first: this paces the reads
        time.sleep(0.005)
        return plenty()

    warmer = PageCacheWarmer(128 * MiB, chunk=MiB, meminfo=slow_plenty, stall_pct=lambda: None)
    warmer.set_models({"old": [old], "new": [new]})
    warmer.touch("old")
    warmer.start()
    try:
        await until(lambda: warmer.stats.reads >= 2)
        warmer.newcomers({"new"})
        await until(lambda: resident_bytes(new) >= 8 * MiB)
        assert resident_bytes(old) < 48 * MiB, "the newcomer waited for the other model's whole file"
        await asyncio.sleep(0.05)
        assert resident_bytes(old) < 48 * MiB, "nothing else is read until the newcomer's load ends"
        warmer.newcomers(set())
        await until(lambda: resident_bytes(old) >= 64 * MiB)  # and the other model is finished afterwards
    finally:
        await warmer.stop()


async def test_where_the_file_system_cannot_say_what_is_cached_a_newcomer_is_read_and_then_rarely_again(
    cold_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RWF_NOWAIT unsupported (EOPNOTSUPP, seen in the Molecule containers): read a newcomer's files whole, and a
    model kept warm at most every BLIND_REREAD_S, not at every pass."""
    monkeypatch.setattr("router_app.memory.warming.chunk_cached", lambda *_: None)
    async with warming(cold_file) as warmer:
        warmer.newcomers({"b"})
        await until(lambda: warmer.stats.reads == 16)
        warmer.newcomers(set())  # the load ended: b is a model kept warm now, and a pass runs
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert warmer.stats.reads == 16 and warmer.stats.last_error is None
