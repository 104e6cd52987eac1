"""Page-cache warming with real llama-server (b11312): a newcomer's weights are read while its victim drains, and the
warmer never reads while an engine loads."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import pytest

from router_app.memory.pagecache import drop, resident_bytes
from tests.conftest import ROOT, llama_model, wait_until

# Run as the engine's command: records how much of the model file is in the page cache the moment the engine
# starts, then becomes llama-server.
AT_START = (
    "import os, sys; sys.path.insert(0, sys.argv[1]);"
    "from pathlib import Path; from router_app.memory.pagecache import resident_bytes;"
    "model = Path(sys.argv[sys.argv.index('-m') + 1]);"
    "Path(sys.argv[2]).write_text(str(resident_bytes(model) / model.stat().st_size));"
    "os.execv(sys.argv[3], sys.argv[3:])"
)


@pytest.fixture(scope="module")
def medium_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MB llama GGUF: big enough that reading it takes a while, small enough for a test."""
    from router_app.tools.tiny_gguf import write_model

    path = tmp_path_factory.mktemp("medium") / "medium.gguf"
    return write_model(path, name="medium", seed=5, layers=4, dim=1024, heads=8, ff=4096, ctx=1024)


def stream(url: str, model: str, tokens: int, started: threading.Event) -> None:
    body = {"model": model, "prompt": "once", "max_tokens": tokens, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                started.set()


def complete(url: str, model: str) -> None:
    response = httpx.post(url + "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1}, timeout=300)
    assert response.status_code == 200, response.text


def test_a_newcomer_is_read_into_the_page_cache_while_its_victim_drains(
    start_router, llama_server_bin, models_dir: Path, medium_gguf: Path, tmp_path: Path
) -> None:
    at_start = tmp_path / "cached-at-start"
    newcomer = llama_model(llama_server_bin, medium_gguf, "medium", group="one")
    newcomer["command"] = [sys.executable, "-c", AT_START, str(ROOT), str(at_start), *newcomer["command"]]
    models = [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", ctx=8192, group="one"), newcomer]
    router = start_router(models, page_cache_budget="1GiB", fairness_s=0)
    complete(router.url, "tiny-a")
    drop(medium_gguf)
    assert resident_bytes(medium_gguf) < 0.01 * medium_gguf.stat().st_size

    started = threading.Event()
    victim = threading.Thread(target=stream, args=(router.url, "tiny-a", 6000, started))
    victim.start()
    assert started.wait(60)
    complete(router.url, "medium")  # waits for tiny-a's answer to end (one model at a time), then loads
    victim.join()

    cached = float(at_start.read_text())
    assert cached >= 0.9, f"only {cached:.0%} of the newcomer's file was cached when its engine started"
    warming = router.health()["page_cache"]
    assert warming["read_bytes"] >= 0.9 * medium_gguf.stat().st_size
    assert warming["reads_during_loads"] == 0


def test_warming_never_reads_while_an_engine_loads(
    start_router, llama_server_bin, models_dir: Path, medium_gguf: Path
) -> None:
    models = [
        llama_model(llama_server_bin, medium_gguf, "medium", group="one"),
        llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", group="one"),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b", group="one"),
    ]
    router = start_router(models, page_cache_budget="1GiB")
    size = medium_gguf.stat().st_size

    # A newcomer whose victim leaves at once: the warmer starts on its file, and stops when its engine starts
    # reading the file itself.
    complete(router.url, "tiny-a")
    drop(medium_gguf)
    complete(router.url, "medium")
    assert router.health()["page_cache"]["reads_during_loads"] == 0

    # A model kept warm (used before) whose pages were pushed out: read again, but only after tiny-b's load.
    complete(router.url, "tiny-a")  # medium's engine stops
    drop(medium_gguf)
    before = router.health()["page_cache"]["read_bytes"]
    complete(router.url, "tiny-b")
    wait_until(lambda: resident_bytes(medium_gguf) >= 0.9 * size, "medium's file warm again")
    warming = router.health()["page_cache"]
    assert warming["read_bytes"] - before >= 0.9 * size
    assert warming["reads_during_loads"] == 0
