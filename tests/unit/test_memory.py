"""The memory model: GGUF metadata and estimates, NVML through a fake, history persistence."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from router_app.config import parse_config, parse_size
from router_app.memory.devices import MemoryModel, Nvml, rss_of
from router_app.memory.estimate import GGUF_OVERHEAD, estimate_footprint
from router_app.memory.gguf import gguf_kv_cache_bytes, gguf_metadata
from router_app.memory.history import History, SleepRecord
from router_app.tools.tiny_gguf import write_model

G = 1024**3


def config(memory: dict | None = None, **model: object):
    entry = {"id": "m", "backend": "llamacpp", "command": ["x", "--port", "${PORT}"], **model}
    return parse_config({"router": {"memory": memory or {}}, "models": [entry]})


def test_sizes_accept_binary_and_decimal_units() -> None:
    assert parse_size("24GiB") == 24 * G and parse_size("512 MiB") == 512 * 1024**2
    assert parse_size("8GB") == 8 * 10**9 and parse_size(1000) == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_gguf_metadata_matches_what_the_gguf_package_wrote(tmp_path: Path) -> None:
    path = write_model(tmp_path / "t.gguf", name="t", seed=1, ctx=4096)
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 4096
    layers, heads = meta["llama.block_count"], meta["llama.attention.head_count"]
    kv_heads, width = meta["llama.attention.head_count_kv"], meta["llama.embedding_length"]
    head_dim = width // heads
    assert gguf_kv_cache_bytes(meta, 1000) == layers * kv_heads * 2 * head_dim * 1000 * 2


def test_gguf_estimate_is_file_plus_kv_cache_at_the_configured_context(tmp_path: Path) -> None:
    path = write_model(tmp_path / "t.gguf", name="t", seed=1)
    meta = gguf_metadata(path)
    model = config(command=["llama-server", "-m", str(path), "-c", "2048", "--port", "${PORT}"]).models[0]
    expected = path.stat().st_size + gguf_kv_cache_bytes(meta, 2048) + GGUF_OVERHEAD
    assert estimate_footprint(model, 80 * G, 1) == expected
    assert estimate_footprint(model, 80 * G, 2) == expected // 2  # split over two GPUs


def test_engines_reserving_a_memory_fraction_are_estimated_from_it() -> None:
    vllm = parse_config(
        {"models": [{"id": "v", "backend": "vllm", "port": 9000, "command": ["vllm", "serve"]}]}
    ).models[0]
    assert estimate_footprint(vllm, 80 * G, 1) == int(80 * G * 0.9)  # vLLM's default gpu_memory_utilization
    sglang = parse_config(
        {"models": [{"id": "s", "backend": "sglang", "port": 9000, "command": ["x"], "mem_fraction": 0.5}]}
    ).models[0]
    assert estimate_footprint(sglang, 80 * G, 1) == 40 * G
    flagged = parse_config(
        {"models": [{"id": "s", "backend": "sglang", "port": 9000, "command": ["x", "--mem-fraction-static", "0.7"]}]}
    ).models[0]
    assert estimate_footprint(flagged, 80 * G, 1) == int(80 * G * 0.7)
    bare = parse_config({"models": [{"id": "s", "backend": "sglang", "port": 9000, "command": ["x"]}]}).models[0]
    assert estimate_footprint(bare, 80 * G, 1) == 80 * G  # SGLang sizes its pool itself: the whole device


class FakeNvml:
    """pynvml's calls as the router uses them (names and shapes of nvidia-ml-py's pynvml module)."""

    def __init__(self, totals: list[int], procs: dict[int, list[tuple[int, int]]]) -> None:
        self.totals = totals
        self.procs = procs
        self.used = [0] * len(totals)

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.totals[handle], free=self.totals[handle] - self.used[handle])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.procs.get(handle, [])]


def test_nvml_gives_capacities_and_the_engine_process_trees_use_per_gpu() -> None:
    me = os.getpid()
    fake = FakeNvml([80 * G, 96 * G], {0: [(me, 20 * G), (1, 5 * G)], 1: [(me, 30 * G)]})
    nvml = Nvml(fake)
    model_config = config({"reserve": "1GiB"}, devices=["0", "1"])
    memory = MemoryModel(model_config, nvml)
    assert memory.source == "nvml"
    assert memory.capacities() == {"0": 79 * G, "1": 95 * G}
    assert memory.measure(model_config.models[0], [me]) == {"0": 20 * G, "1": 30 * G}


def test_declared_capacity_on_gpu_overrides_nvml_and_cpu_budgets_use_rss() -> None:
    fake = FakeNvml([80 * G], {})
    memory = MemoryModel(config({"devices": {"0": "70GiB", "cpu": "2GiB"}}), Nvml(fake))
    assert memory.capacities() == {"0": 70 * G, "cpu": 2 * G}
    assert memory.devices["0"].kind == "gpu" and memory.devices["cpu"].kind == "declared"
    cpu_only = config({"devices": {"cpu": "2GiB"}}, devices=["cpu"])
    measured = MemoryModel(cpu_only).measure(cpu_only.models[0], [os.getpid()])
    assert measured["cpu"] == rss_of([os.getpid()]) or abs(measured["cpu"] - rss_of([os.getpid()])) < 64 * 1024**2


def test_without_nvml_or_declared_devices_models_live_in_their_group_one_at_a_time() -> None:
    memory = MemoryModel(config())
    assert memory.source == "off" and not memory.enabled
    assert memory.devices_of(config().models[0]) == ("default",)


def test_waiting_for_free_memory_polls_until_the_victims_memory_is_back() -> None:
    fake = FakeNvml([80 * G], {})
    fake.used[0] = 70 * G
    memory = MemoryModel(config({"free_wait_s": 5}), Nvml(fake))

    async def scenario() -> str | None:
        async def free_later() -> None:
            await asyncio.sleep(0.2)
            fake.used[0] = 10 * G

        task = asyncio.create_task(free_later())
        short = await memory.wait_free(["0"], 40 * G)
        await task
        return short

    assert asyncio.run(scenario()) is None
    memory.settings = memory.settings.model_copy(update={"free_wait_s": 0.1})
    fake.used[0] = 70 * G
    assert "GPU 0" in asyncio.run(memory.wait_free(["0"], 40 * G))


def test_history_keeps_the_last_load_times_and_footprints_per_shape(tmp_path: Path) -> None:
    history = History(tmp_path)
    for seconds in (10, 20, 30, 40, 50, 60, 70, 80):
        history.record_load("m", seconds)
    history.record_footprint("m", "shape-1", {"0": 5 * G})
    again = History(tmp_path)
    assert again.get("m").load_times == [20, 30, 40, 50, 60, 70, 80]
    assert again.get("m").median_load_s() == 50
    assert again.footprint("m", "shape-1") == {"0": 5 * G}
    assert again.footprint("m", "shape-2") == {}, "a changed command starts from a fresh estimate"
    (tmp_path / "models.json").write_text("{not json")
    assert History(tmp_path).models == {}


def test_history_keeps_the_revision_loaded_and_the_engine_put_to_sleep(tmp_path: Path) -> None:
    history = History(tmp_path)
    assert history.records_sleep and not history.loaded_before("m", "r1")
    history.record_load("m", 12.0, "r1")
    history.record_asleep("m", 4242, "its answer")
    again = History(tmp_path)
    assert again.loaded_before("m", "r1") and not again.loaded_before("m", "r2")
    assert again.sleep_record("m") == SleepRecord(4242, "its answer", known=True)
    assert again.sleep_record("other") == SleepRecord(None, None, known=True)  # recorded: never put to sleep
    assert History(None).sleep_record("m").known is False  # nothing survives a restart: cannot vouch
    # A file written by a router that did not record sleeps (a10d443): "no PID" proves nothing.
    (tmp_path / "models.json").write_text('{"models": {"m": {"load_times": [3.0]}}}')
    old = History(tmp_path)
    assert old.sleep_record("m") == SleepRecord(None, None, known=False) and not old.loaded_before("m", "r1")
