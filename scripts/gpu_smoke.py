#!/usr/bin/env python3
"""GPU smoke test for a real NVIDIA host (H100/H200, RTX PRO 6000, ...): `make gpu-smoke`.

Converges roles/llm_router on this machine with one small public model per engine, then drives requests
through the router on 127.0.0.1:<port>: a cold load and a chat per engine, and one sleep/wake cycle per
engine that sleeps (SGLang, vLLM), checking the answer after the wake. Prints one line per engine:

    PASS  vllm           load   38.2s  wake   1.9s   412.7 tok/s  Qwen/Qwen2.5-0.5B-Instruct-AWQ

Needs root (or passwordless sudo) for the converge, the NVIDIA driver, a CUDA toolkit at
llm_router_cuda_home when llama.cpp is built, and internet access (PyPI, GitHub, Hugging Face).
Standard library only, so it runs with the repository's .venv python.
"""

from __future__ import annotations

import argparse
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


def chat(base: str, key: str, model: str, prompt: str, max_tokens: int) -> tuple[str, float]:
    """(answer, completion tokens per second over the whole request)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.monotonic()
    status, reply = http("POST", f"{base}/v1/chat/completions", body, key, timeout=1800)
    elapsed = time.monotonic() - started
    if status != 200 or not isinstance(reply, dict):
        raise RuntimeError(f"chat HTTP {status}: {str(reply)[:300]}")
    text = reply["choices"][0]["message"].get("content") or ""
    tokens = (reply.get("usage") or {}).get("completion_tokens") or len(text.split())
    return text, tokens / elapsed if elapsed > 0 else 0.0


def admin(base: str, key: str, action: str, model: str) -> float:
    started = time.monotonic()
    status, reply = http("POST", f"{base}/admin/{action}", {"model": model}, key, timeout=1800)
    if status != 200:
        raise RuntimeError(f"/admin/{action} {model}: HTTP {status}: {str(reply)[:300]}")
    return time.monotonic() - started


def drive(base: str, client_key: str, admin_key: str, smoke: Smoke) -> str:
    """Cold load, chat, and for sleeping engines unload (sleep) + load (wake) + a checked answer."""
    model = smoke.entry["id"]
    load_s = admin(base, admin_key, "load", model)
    _, tps = chat(base, client_key, model, "Count from 1 to 40, separated by spaces.", 128)
    wake = "     -"
    if smoke.entry.get("evict") == "sleep":
        admin(base, admin_key, "unload", model)
        wake_s = admin(base, admin_key, "load", model)
        answer, _ = chat(base, client_key, model, "What is 7 plus 5? Reply with the number only.", 8)
        if "12" not in answer:
            raise RuntimeError(f"after wake the answer to 7+5 was {answer!r} (weights lost while asleep?)")
        wake = f"{wake_s:6.1f}s"
    admin(base, admin_key, "unload", model)
    return f"load {load_s:6.1f}s  wake {wake}  {tps:7.1f} tok/s"


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
        try:
            result = f"PASS  {smoke.engine:<14} {drive(base, client_key, admin_key, smoke)}"
        except Exception as exc:  # one line per engine, whatever broke
            failed += 1
            result = f"FAIL  {smoke.engine:<14} {exc}"
        label = f"{smoke.repo}@{smoke.revision}" if smoke.repo else smoke.entry["source"].rsplit("/", 1)[-1]
        lines.append(f"{result}  {label}")
        print(lines[-1], flush=True)
    print("\n".join(["", "gpu-smoke summary:", *lines]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
