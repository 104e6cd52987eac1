#!/usr/bin/env python3
"""GPU smoke test for a real NVIDIA host (H100/H200, RTX PRO 6000, ...): `make gpu-smoke`.

Converges roles/llm_router on this machine with one small public model per engine, then drives requests
through the router on 127.0.0.1:<port>. Per engine: a cold load, a greedy chat (tok/s) and one sampled chat
(temperature 0.7, top_p 0.9, top_k 40: SGLang JIT-compiles FlashInfer's sampling kernels at the first sampled
request, engine-audit-2 #2). Per engine that sleeps (SGLang, vLLM, TabbyAPI, all `evict: sleep` here): a second
cold load with warm caches (the reference), then sleep and wake, judged by `verdict`: the wake must keep the
engine's process, must not be a wake-integrity restart, must be at most WAKE_MAX_RATIO of the cold load, and the
answer after it must be right. Prints one line per engine, e.g.

    PASS  vllm           first  52.0s  load  38.2s  wake   1.9s (0.05)   412.7 tok/s  Qwen/Qwen2.5-0.5B-Instruct-AWQ

Needs root (or passwordless sudo) for the converge, the NVIDIA driver, a CUDA toolkit at
llm_router_cuda_home when llama.cpp is built, and internet access (PyPI, GitHub, Hugging Face).
Standard library only, so it runs with the repository's .venv python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HF = "https://huggingface.co"
# A wake may take at most this share of a cold load (with warm caches) of the same model. A wake keeps the process,
# its CUDA context, compiled kernels and CUDA graphs and only brings the weights (and KV pool) back; a cold restart
# in disguise (the router's wake-integrity fallback, a unit restarted by systemd) repeats the whole load and comes
# out near 1.0. 0.5 leaves the cold load's own variance room on both sides.
WAKE_MAX_RATIO = 0.5
# The sampled request: the readiness probe's parameters (router_app/engines/adapters/base.py SAMPLED_PROBE).
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 40}


@dataclass
class Smoke:
    """One engine's model: its inventory entry and, for directory models, the Hugging Face repo to fetch."""

    engine: str
    entry: dict[str, Any]
    repo: str = ""
    revision: str = "main"


def smoke_models(models_dir: Path) -> list[Smoke]:
    """Small public models, one per engine (override repos with SMOKE_<ENGINE>_REPO / _REVISION)."""

    def env(engine: str, repo: str, revision: str = "main") -> tuple[str, str]:
        key = engine.upper().replace("-", "_")
        return os.environ.get(f"SMOKE_{key}_REPO", repo), os.environ.get(f"SMOKE_{key}_REVISION", revision)

    awq, awq_rev = env("awq", "Qwen/Qwen2.5-0.5B-Instruct-AWQ")
    exl3, exl3_rev = env("exl3", "turboderp/Llama-3.2-1B-Instruct-exl3", "4.0bpw")
    exl2, exl2_rev = env("exl2", "turboderp/Llama-3.2-1B-Instruct-exl2", "4.0bpw")
    gguf = os.environ.get(
        "SMOKE_GGUF_URL",
        f"{HF}/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf",
    )
    common = {"group": "smoke", "context_length": 4096, "load_timeout_s": 1800}
    return [
        Smoke(
            "llamacpp",
            {
                "id": "smoke-llamacpp",
                "backend": "llamacpp",
                "model": str(models_dir / Path(urllib.parse.urlparse(gguf).path).name),
                "source": gguf,
                "format": "gguf",
                **common,
            },
        ),
        Smoke(
            "sglang",
            {
                "id": "smoke-sglang",
                "backend": "sglang",
                "model": str(models_dir / awq.split("/")[-1]),
                "format": "awq",
                "quantization": "awq_marlin",
                "mem_fraction": 0.3,
                "evict": "sleep",
                **common,
            },
            awq,
            awq_rev,
        ),
        Smoke(
            "vllm",
            {
                "id": "smoke-vllm",
                "backend": "vllm",
                "model": str(models_dir / awq.split("/")[-1]),
                "mem_fraction": 0.3,
                "evict": "sleep",
                **common,
            },
            awq,
            awq_rev,
        ),
        Smoke(
            "tabbyapi",
            {
                "id": "smoke-tabbyapi",
                "backend": "tabbyapi",
                "model": str(models_dir / f"{exl3.split('/')[-1]}-{exl3_rev}"),
                "format": "exl3",
                # unload through the admin API, the process stays (router_app/engines/adapters/tabbyapi.py)
                "evict": "sleep",
                **common,
            },
            exl3,
            exl3_rev,
        ),
        Smoke(
            "tabbyapi-exl2",
            {
                "id": "smoke-tabbyapi-exl2",
                "backend": "tabbyapi",
                "model": str(models_dir / f"{exl2.split('/')[-1]}-{exl2_rev}"),
                "format": "exl2",
                "evict": "sleep",
                **common,
            },
            exl2,
            exl2_rev,
        ),
    ]


def http(method: str, url: str, body: Any = None, key: str = "", timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed JSON or text); connection errors are status 0."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def download_repo(repo: str, revision: str, dest: Path) -> None:
    """Fetch every file of a Hugging Face model repo at `revision` into dest (skips files already there)."""
    token = os.environ.get("HF_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = f"{HF}/api/models/{repo}/revision/{urllib.parse.quote(revision, safe='')}"
    with urllib.request.urlopen(urllib.request.Request(api, headers=headers), timeout=60) as response:
        files = [s["rfilename"] for s in json.load(response).get("siblings", [])]
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = dest / name
        if target.exists() and target.stat().st_size > 0:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{HF}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(name)}"
        print(f"  {repo}@{revision}: {name}", flush=True)
        partial = target.with_name(target.name + ".part")
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=600) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        partial.rename(target)
    dest.chmod(0o755)


def converge(inventory: Path, ask_become: bool) -> None:
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    cmd = [playbook, "-i", str(inventory), str(ROOT / "site.yml")]
    if ask_become:
        cmd.append("--ask-become-pass")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles")}
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, check=False, env=env, cwd=ROOT).returncode != 0:
        raise SystemExit("gpu-smoke: the role did not converge (see the Ansible output above); nothing was tested")


def wait_router(base: str, timeout: float = 120) -> None:
    deadline, delay = time.monotonic() + timeout, 0.2
    while time.monotonic() < deadline:
        status, _ = http("GET", f"{base}/health", timeout=5)
        if status == 200:
            return
        time.sleep(delay)
        delay = min(delay * 2, 5)
    raise SystemExit(f"router at {base} did not answer /health within {timeout:.0f}s")


def chat(
    base: str, key: str, model: str, prompt: str, max_tokens: int, sampling: dict[str, float] | None = None
) -> tuple[str, float]:
    """(answer, completion tokens per second over the whole request); greedy unless `sampling` is given."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        **(sampling or {"temperature": 0}),
    }
    started = time.monotonic()
    status, reply = http("POST", f"{base}/v1/chat/completions", body, key, timeout=1800)
    elapsed = time.monotonic() - started
    if status != 200 or not isinstance(reply, dict) or not reply.get("choices"):
        raise RuntimeError(f"chat HTTP {status}: {str(reply)[:300]}")
    text = reply["choices"][0].get("message", {}).get("content") or ""
    tokens = (reply.get("usage") or {}).get("completion_tokens") or len(text.split())
    return text, tokens / elapsed if elapsed > 0 else 0.0


def admin(base: str, key: str, action: str, model: str) -> float:
    started = time.monotonic()
    status, reply = http("POST", f"{base}/admin/{action}", {"model": model}, key, timeout=1800)
    if status != 200:
        raise RuntimeError(f"/admin/{action} {model}: HTTP {status}: {str(reply)[:300]}")
    return time.monotonic() - started


def model_health(base: str, model: str) -> dict[str, Any]:
    """The router's `/health/<model>` (router_app/web/routes/status.py; engines/instance.py `info()`)."""
    status, reply = http("GET", f"{base}/health/{urllib.parse.quote(model, safe='')}", timeout=10)
    if status != 200 or not isinstance(reply, dict):
        raise RuntimeError(f"/health/{model}: HTTP {status}: {str(reply)[:300]}")
    return reply


def engine_pid(health: dict[str, Any]) -> int | None:
    """The engine's PID from `/health/<model>` `supervisor`: "pid N" (process supervisor) or "unit U" (systemd:
    the unit's MainPID; model-start.sh execs the engine, so that is the engine itself)."""
    supervisor = str(health.get("supervisor", ""))
    kind, _, value = supervisor.partition(" ")
    if kind == "pid" and value.isdigit():
        return int(value)
    if kind == "unit" and value:
        result = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", value], capture_output=True, text=True, check=False
        )
        pid = result.stdout.strip()
        return int(pid) if pid.isdigit() and int(pid) > 0 else None
    return None


@dataclass
class Measured:
    """What one engine did; `verdict` judges it."""

    engine: str
    first_load_s: float = 0.0  # the first cold load (may compile kernels, fill caches)
    load_s: float = 0.0  # the reference cold load: a second one, with warm caches, for engines that sleep
    tok_s: float = 0.0
    sampled_error: str = ""  # why the sampled chat failed; "" = it answered and the engine stayed ready
    sleeps: bool = False
    state_asleep: str = ""  # /health/<model> state after the sleeping /admin/unload
    wake_s: float | None = None
    pid_before: int | None = None  # engine PID before the sleep ...
    pid_after: int | None = None  # ... and after the wake
    restarts_before: int = 0  # wake_integrity_restarts before the sleep ...
    restarts_after: int = 0  # ... and after the wake
    answer_after_wake: str = ""


def verdict(m: Measured) -> list[str]:
    """Why this engine fails the smoke (empty: it passes). Pure: the rules live here and nowhere else."""
    reasons = []
    if m.sampled_error:  # the sleep cycle did not run (drive stops there)
        return [f"sampled request (top_p/top_k) failed: {m.sampled_error}"]
    if not m.sleeps:
        return reasons
    if m.state_asleep != "sleeping":
        reasons.append(f"after the sleep the model was {m.state_asleep or 'unknown'!r}, not 'sleeping'")
    if m.restarts_after != m.restarts_before:
        reasons.append(
            f"the wake restarted the engine cold (wake_integrity_restarts {m.restarts_before} -> {m.restarts_after})"
        )
    if m.pid_before is None or m.pid_after is None:
        reasons.append(f"engine PID unknown across the sleep/wake ({m.pid_before} -> {m.pid_after})")
    elif m.pid_before != m.pid_after:
        reasons.append(f"engine PID changed across the sleep/wake ({m.pid_before} -> {m.pid_after}): a restart")
    if m.wake_s is None or m.load_s <= 0:
        reasons.append("no wake or no cold load measured")
    elif m.wake_s > WAKE_MAX_RATIO * m.load_s:
        reasons.append(
            f"wake {m.wake_s:.1f}s is more than {WAKE_MAX_RATIO} x the cold load {m.load_s:.1f}s: not a wake"
        )
    if "12" not in m.answer_after_wake:
        reasons.append(f"after the wake the answer to 7+5 was {m.answer_after_wake!r} (weights lost while asleep?)")
    return reasons


def report(m: Measured, reasons: list[str]) -> str:
    """One line: PASS/FAIL, engine, first and reference load, wake (its share of the load), tok/s, reasons."""
    wake = "     -        "
    if m.wake_s is not None:
        wake = f"{m.wake_s:6.1f}s ({m.wake_s / m.load_s:.2f})" if m.load_s > 0 else f"{m.wake_s:6.1f}s (  - )"
    line = (
        f"{'FAIL' if reasons else 'PASS'}  {m.engine:<14} first {m.first_load_s:6.1f}s  load {m.load_s:6.1f}s  "
        f"wake {wake}  {m.tok_s:7.1f} tok/s"
    )
    return line + ("  " + "; ".join(reasons) if reasons else "")


def drive(base: str, client_key: str, admin_key: str, smoke: Smoke) -> Measured:
    """Cold load, greedy and sampled chat; for sleeping engines a second cold load, sleep, wake and a checked answer."""
    model = smoke.entry["id"]
    m = Measured(smoke.engine, sleeps=smoke.entry.get("evict") == "sleep")
    m.first_load_s = m.load_s = admin(base, admin_key, "load", model)
    _, m.tok_s = chat(base, client_key, model, "Count from 1 to 40, separated by spaces.", 128)
    try:
        chat(base, client_key, model, "Write one sentence about the sea.", 32, SAMPLING)
        state = model_health(base, model).get("state")
        if state != "ready":
            m.sampled_error = f"the model is {state!r} after it"
    except RuntimeError as exc:
        m.sampled_error = str(exc)
    if m.sampled_error:  # the engine may be gone: report why, not what failed after it
        with contextlib.suppress(RuntimeError):
            admin(base, admin_key, "unload", model)
        return m
    if m.sleeps:
        admin(base, admin_key, "unload", model)  # sleep
        admin(base, admin_key, "unload", model)  # a sleeping model's unload stops it (scheduler.unload)
        m.load_s = admin(base, admin_key, "load", model)  # cold again, caches warm: the reference
        health = model_health(base, model)
        m.pid_before, m.restarts_before = engine_pid(health), int(health.get("wake_integrity_restarts", 0))
        admin(base, admin_key, "unload", model)
        m.state_asleep = str(model_health(base, model).get("state", ""))
        m.wake_s = admin(base, admin_key, "load", model)
        health = model_health(base, model)
        m.pid_after, m.restarts_after = engine_pid(health), int(health.get("wake_integrity_restarts", 0))
        m.answer_after_wake, _ = chat(base, client_key, model, "What is 7 plus 5? Reply with the number only.", 8)
        admin(base, admin_key, "unload", model)
    admin(base, admin_key, "unload", model)
    return m


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default=os.environ.get("SMOKE_ENGINES", "llamacpp,sglang,vllm,tabbyapi,tabbyapi-exl2"),
        help="comma-separated subset of llamacpp,sglang,vllm,tabbyapi,tabbyapi-exl2",
    )
    parser.add_argument("--models-dir", type=Path, default=Path("/srv/llm-models/smoke"))
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    parser.add_argument("--skip-download", action="store_true", help="models are already in --models-dir")
    parser.add_argument("--skip-converge", action="store_true", help="the role is already applied")
    parser.add_argument("--ask-become-pass", action="store_true", help="pass -K to ansible-playbook")
    args = parser.parse_args()

    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    smokes = [s for s in smoke_models(args.models_dir) if s.engine in wanted]
    if not smokes:
        parser.error(f"no known engine in {args.engines!r}")
    client_key, admin_key = "sk-smoke-" + secrets.token_hex(16), "sk-smoke-admin-" + secrets.token_hex(16)
    base = f"http://127.0.0.1:{args.port}"

    if not args.skip_download:
        for smoke in smokes:
            if smoke.repo:
                print(f"download {smoke.repo}@{smoke.revision} -> {smoke.entry['model']}", flush=True)
                download_repo(smoke.repo, smoke.revision, Path(smoke.entry["model"]))
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        host = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become": os.geteuid() != 0,
            "llm_router_listen_host": "127.0.0.1",
            "llm_router_listen_port": args.port,
            "llm_router_cuda_home": args.cuda_home,
            "llm_router_api_keys": [client_key],
            "llm_router_admin_key": admin_key,
            "llm_router_models": [s.entry for s in smokes],
        }
        inventory = Path(tmp) / "hosts.json"
        inventory.write_text(json.dumps({"llm_router": {"hosts": {"localhost": host}}}))
        if not args.skip_converge:
            converge(inventory, args.ask_become_pass)
    if args.skip_converge:
        print("note: --skip-converge keeps the router's own keys; set SMOKE_CLIENT_KEY and SMOKE_ADMIN_KEY")
        client_key = os.environ.get("SMOKE_CLIENT_KEY", client_key)
        admin_key = os.environ.get("SMOKE_ADMIN_KEY", admin_key)
    wait_router(base)

    failed = 0
    lines = []
    for smoke in smokes:
        label = f"{smoke.repo}@{smoke.revision}" if smoke.repo else smoke.entry["source"].rsplit("/", 1)[-1]
        try:
            measured = drive(base, client_key, admin_key, smoke)
            reasons = verdict(measured)
            result = report(measured, reasons)
        except Exception as exc:  # one line per engine, whatever broke
            reasons = [str(exc)]
            result = f"FAIL  {smoke.engine:<14} {exc}"
        failed += bool(reasons)
        lines.append(f"{result}  {label}")
        print(lines[-1], flush=True)
    print("\n".join(["", "gpu-smoke summary:", *lines]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
