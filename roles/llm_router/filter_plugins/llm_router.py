"""Filters that turn the inventory's model list into engine command lines, unit names and the
router's config.yml (the contract in docs/config.md). Kept in Python so the logic is testable
(tests/unit/test_role_filters.py) instead of living in long Jinja expressions."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from typing import Any

BACKENDS = ("llamacpp", "sglang", "tabbyapi", "vllm", "openai")
LOCAL = "127.0.0.1"


class FilterError(Exception):
    pass


def model_slug(model_id: str) -> str:
    """A unit-instance-safe name: lower-case letters, digits and '-' (e.g. Qwen/Qwen2.5-7B -> qwen-qwen2-5-7b)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")
    if not slug:
        raise FilterError(f"model id {model_id!r} has no letters or digits")
    return slug


def cuda_architectures(compute_capabilities: list[Any]) -> list[str]:
    """nvidia-smi compute_cap values -> CMAKE_CUDA_ARCHITECTURES entries: 9.0 -> 90, 12.0 -> 120a.

    Blackwell consumer/workstation parts (12.x) need the arch-specific 'a' variant for their FP4
    tensor cores; ggml rewrites 12X to 12Xa itself, the role says so explicitly.
    """
    archs: list[str] = []
    for value in compute_capabilities:
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)\.(\d+)", text)
        if not match:
            raise FilterError(f"compute capability {text!r} is not like '9.0' or '12.0'")
        major, minor = int(match.group(1)), int(match.group(2))
        arch = f"{major}{minor}" + ("a" if major >= 12 else "")
        if arch not in archs:
            archs.append(arch)
    return archs


# Pythons the distribution packages, in order of preference (the default python3 first). Sources:
# Debian 12: python3 3.11.2 (apt-cache policy python3-venv python3.11-dev on bookworm);
# Ubuntu 22.04: python3 3.10.6 (packages.ubuntu.com/jammy-updates/python3-venv), python3.11
# 3.11.0~rc1-1~22.04 in universe (packages.ubuntu.com/jammy-updates/python3.11-venv, .../python3.11-dev);
# Ubuntu 24.04: python3 3.12.3 (packages.ubuntu.com/noble-updates/amd64/python3-venv).
DISTRO_PYTHONS: dict[str, list[dict[str, Any]]] = {
    "Debian 12": [
        {"version": "3.11", "path": "/usr/bin/python3", "packages": ["python3-venv"], "dev": ["python3-dev"]},
    ],
    "Ubuntu 22.04": [
        {"version": "3.10", "path": "/usr/bin/python3", "packages": ["python3-venv"], "dev": ["python3-dev"]},
        {"version": "3.11", "path": "/usr/bin/python3.11", "packages": ["python3.11-venv"], "dev": ["python3.11-dev"]},
    ],
    "Ubuntu 24.04": [
        {"version": "3.12", "path": "/usr/bin/python3", "packages": ["python3-venv"], "dev": ["python3-dev"]},
    ],
}
ROUTER_PYTHON = ">=3.11"  # pyproject.toml requires-python (StrEnum in router_app/config.py)
# SGLang 0.5.11 and later are torch 2.11 / CUDA 13 builds on PyPI; 0.5.10.post1 is the last on torch 2.9.1
# and cuda-python 12.9 (wheel METADATA; docs/provisioning.md "Engine install lanes").
SGLANG_FIRST_CUDA13 = (0, 5, 11)
# Engines with their own venv and install lanes (tabbyapi_exl2: the exl2-checkpoint checkout).
ENGINE_NAMES = ("sglang", "vllm", "tabbyapi", "tabbyapi_exl2")


def _version_tuple(text: Any) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); '3.11' -> (3, 11); '' -> ()."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text)))


def _python_ok(version: str, accepted: Any) -> bool:
    """Whether Python 'X.Y' is accepted: a list of 'X.Y' strings, or a specifier such as '>=3.11,<3.15'."""
    if isinstance(accepted, (list, tuple)):
        return version in [str(v) for v in accepted]
    have = _version_tuple(version)
    for clause in str(accepted).split(","):
        match = re.fullmatch(r"\s*(>=|<=|==|>|<|!=)\s*([\d.]+)\s*", clause)
        if not match:
            raise FilterError(f"Python specifier {accepted!r} is not like '>=3.11,<3.15'")
        op, want = match.group(1), _version_tuple(match.group(2))
        cmp = (have[: len(want)] > want) - (have[: len(want)] < want)
        if not {">=": cmp >= 0, "<=": cmp <= 0, "==": cmp == 0, ">": cmp > 0, "<": cmp < 0, "!=": cmp != 0}[op]:
            return False
    return True


def _describe_pythons(accepted: Any) -> str:
    if isinstance(accepted, (list, tuple)):
        return "Python " + "/".join(str(v) for v in accepted)
    return f"Python {accepted}"


def gpu_query(lines: list[str]) -> dict[str, Any]:
    """`nvidia-smi --query-gpu=compute_cap,driver_version --format=csv,noheader` -> caps and driver."""
    caps: list[str] = []
    drivers: list[str] = []
    for line in lines:
        parts = [p.strip() for p in str(line).split(",")]
        if len(parts) == 2 and all(parts):
            caps.append(parts[0])
            drivers.append(parts[1])
    return {"compute_caps": caps, "driver": min(drivers, key=_version_tuple) if drivers else ""}


def distro_pythons(distribution: str, version: str) -> list[dict[str, Any]]:
    """The Pythons this distribution's own archive provides (DISTRO_PYTHONS), default first.

    version: Ubuntu's '22.04', or Debian's point release '12.11' (matched on its major version).
    """
    table = DISTRO_PYTHONS.get(f"{distribution} {version}") or DISTRO_PYTHONS.get(
        f"{distribution} {str(version).split('.')[0]}", []
    )
    return [dict(p, source="apt") for p in table]


def router_python(candidates: list[dict[str, Any]], override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The interpreter for the router's venv: the override, else the first distro Python >= 3.11."""
    pool = [override] if override else candidates
    for python in pool:
        if _python_ok(python["version"], ROUTER_PYTHON):
            return dict(python, error="")
    found = ", ".join(f"{p['version']} ({p['path']})" for p in pool) or "none"
    return {
        "path": "",
        "version": "",
        "packages": [],
        "dev": [],
        "error": f"router: needs Python {ROUTER_PYTHON}; found {found}. Fix: set llm_router_python to a "
        "Python 3.11+ interpreter (Ubuntu 22.04: apt install python3.11-venv, /usr/bin/python3.11).",
    }


def _pin(requirements: list[str], package: str, version: str) -> list[str]:
    """Replace the `package==...` requirement with `package==version` (inventory version override)."""
    if not version or version == "auto":
        return list(requirements)
    pattern = re.compile(rf"^{re.escape(package)}(\[[^\]]*\])?\s*(==|>=|~=|<=|$)")
    out = [r for r in requirements if not pattern.match(r)]
    return [f"{package}=={version}", *out]


def engine_plan(
    engines: list[str],
    lanes: dict[str, dict[str, dict[str, Any]]],
    driver: str,
    compute_caps: list[Any],
    pythons: list[dict[str, Any]],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose each venv engine's install lane and interpreter from the driver, GPUs and Pythons.

    lanes: engine -> lane -> {cuda_major, min_driver, pythons, requirements, extra_index_urls, ...}.
    A lane fits when the driver is at least min_driver, the GPUs have kernels in it (optional `archs`,
    list of compute capabilities) and one of `pythons` (engine override first, else the distro's) accepts
    the lane; the fitting lane with the highest cuda_major wins, unless overrides.lanes names one.
    Returns {"engines": {engine: plan}, "errors": [message per engine that has no lane]}.
    """
    overrides = overrides or {}
    forced_lanes = overrides.get("lanes") or {}
    engine_pythons = overrides.get("pythons") or {}
    versions = overrides.get("versions") or {}
    caps = [str(c).strip() for c in compute_caps]
    found_driver = str(driver or "").strip()
    plans: dict[str, Any] = {}
    errors: list[str] = []
    for key, given in (("llm_router_engine_lanes", forced_lanes), ("llm_router_engine_pythons", engine_pythons)):
        unknown = sorted(set(given) - set(ENGINE_NAMES))
        if unknown:
            errors.append(f"{key}: unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINE_NAMES)}.")
    for engine in engines:
        table = lanes.get(engine) or {}
        if not table:
            errors.append(f"{engine}: no install lanes for this engine in the role's lanes table.")
            continue
        names = sorted(table, key=lambda n: -int(table[n].get("cuda_major", 0)))
        forced = forced_lanes.get(engine)
        if forced:
            if forced not in table:
                errors.append(
                    f"{engine}: lane {forced!r} (llm_router_engine_lanes.{engine}) is not in the lanes table; "
                    f"known lanes: {', '.join(names)}."
                )
                continue
            names = [forced]
        pool = [engine_pythons[engine]] if engine in engine_pythons else pythons
        reasons: list[str] = []
        need_driver: list[str] = []
        need_python: list[str] = []
        for name in names:
            lane = table[name]
            min_driver = str(lane.get("min_driver", ""))
            if not found_driver or _version_tuple(found_driver) < _version_tuple(min_driver):
                reasons.append(f"{name} (CUDA {lane.get('cuda_major')}) needs driver >= {min_driver}")
                need_driver.append(min_driver)
                continue
            archs = lane.get("archs")
            missing = [c for c in caps if archs is not None and c not in [str(a) for a in archs]]
            if missing:
                reasons.append(f"{name} has no kernels for compute capability {', '.join(missing)}")
                continue
            python = next((p for p in pool if _python_ok(p["version"], lane.get("pythons", []))), None)
            if python is None:
                have = ", ".join(p["version"] for p in pool) or "none"
                reasons.append(f"{name} needs {_describe_pythons(lane.get('pythons'))} (this host has {have})")
                need_python.append(_describe_pythons(lane.get("pythons")))
                continue
            requirements = list(lane.get("requirements", []))
            package = {"sglang": "sglang", "vllm": "vllm"}.get(engine)
            version = str(versions.get(engine) or "auto")
            if package:
                requirements = _pin(requirements, package, version)
            if (
                engine == "sglang"
                and version != "auto"
                and int(lane.get("cuda_major", 0)) < 13
                and _version_tuple(version) >= SGLANG_FIRST_CUDA13
            ):
                reasons.append(
                    f"{name}: SGLang 0.5.11 and later need CUDA 13 (pin llm_router_sglang_version <= 0.5.10.post1 "
                    "on CUDA 12)"
                )
                continue
            plans[engine] = {
                "engine": engine,
                "lane": name,
                "cuda_major": int(lane.get("cuda_major", 0)),
                "min_driver": min_driver,
                "python": python["path"],
                "python_version": python["version"],
                "python_packages": list(python.get("packages", [])),
                "dev_packages": list(python.get("dev", [])),
                "requirements": requirements,
                "extra_index_urls": list(lane.get("extra_index_urls", [])),
                "post_install": [list(cmd) for cmd in lane.get("post_install", [])],
            }
            break
        else:
            fixes = []
            if need_driver and len(need_driver) == len(names):
                lowest = min(need_driver, key=_version_tuple)
                fixes.append(
                    f"install NVIDIA driver >= {lowest} (branch R{_version_tuple(lowest)[0]} or newer), or set "
                    "llm_router_nvidia_driver_version if nvidia-smi is not on this host yet"
                )
            if need_python:
                fixes.append(
                    f"set llm_router_engine_pythons.{engine} to an interpreter with {' or '.join(need_python)} "
                    "(e.g. from `uv python install`)"
                )
            if not fixes:
                fixes.append(f"pick another lane in llm_router_engine_lanes.{engine}, or remove the {engine} models")
            errors.append(
                f"{engine}: no install lane fits this host (NVIDIA driver {found_driver or 'not found'}): "
                f"{'; '.join(reasons)}. Fix: {'; or '.join(fixes)}."
            )
    return {"engines": plans, "errors": errors}


def probed_pythons(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Results of the preflight probe loop (`<python> -c ...` per inventory interpreter) -> name -> python."""
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        item = result.get("item") or {}
        name, path = str(item.get("key")), str(item.get("value"))
        version = str(result.get("stdout", "")).strip()
        ok = result.get("rc") == 0 and re.fullmatch(r"\d+\.\d+", version) is not None
        where = "llm_router_python" if name == "router" else f"llm_router_engine_pythons.{name}"
        error = "" if ok else f"{where}: {path} does not run ({result.get('msg') or result.get('stderr') or version})."
        out[name] = {"version": version if ok else "", "path": path, "packages": [], "dev": [], "error": error}
        out[name]["source"] = "inventory"
    return out


# Run once after an engine's venv is (re)built unless its lane lists `post_install` ("{venv}" is replaced).
# `vllm download-kernels` installs the precompiled FlashInfer kernels vLLM would otherwise download or
# compile at first start (vllm/entrypoints/cli/download_kernels.py, in the cu13 lane's 0.32.0); the cu12
# lane's 0.19.1 has no such subcommand, so it is run only where `--help` knows it.
POST_INSTALL: dict[str, list[list[str]]] = {
    "vllm": [
        [
            "/bin/sh",
            "-c",
            'if "$0" download-kernels --help >/dev/null 2>&1; then exec "$0" download-kernels; fi',
            "{venv}/bin/vllm",
        ]
    ]
}


def venv_specs(
    plan: dict[str, dict[str, Any]], paths: dict[str, str], checkouts: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per planned engine: its venv, pip arguments, post-install commands and an install id.

    The id (kept in <venv>/.llm-router-install) changes with the lane, Python, requirements, indexes or
    TabbyAPI commit; only then is the venv rebuilt, so a second run installs nothing.
    """
    checkouts = checkouts or {}
    where = {
        "sglang": paths.get("sglang_venv", ""),
        "vllm": paths.get("vllm_venv", ""),
        # TabbyAPI installs no code of its own (py-modules = []): its lane lists the dependencies.
        "tabbyapi": f"{paths.get('tabbyapi_dir', '')}/venv",
        "tabbyapi_exl2": f"{paths.get('tabbyapi_exl2_dir', '')}/venv",
    }
    specs = []
    for engine in sorted(plan):
        venv = where[engine]
        entry = dict(plan[engine])
        entry["venv"] = venv
        entry["pip_args"] = " ".join(f"--extra-index-url {url}" for url in entry["extra_index_urls"])
        commands = entry["post_install"] or POST_INSTALL.get(engine, [])
        entry["post_install"] = [[arg.replace("{venv}", venv) for arg in cmd] for cmd in commands]
        identity = [
            entry["lane"],
            entry["python"],
            entry["python_version"],
            entry["requirements"],
            entry["extra_index_urls"],
            checkouts.get(engine, ""),
        ]
        entry["id"] = hashlib.sha1(json.dumps(identity).encode()).hexdigest()
        specs.append(entry)
    return specs


def stale_venvs(specs: list[dict[str, Any]], markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs whose slurped <venv>/.llm-router-install (base64) differs from their install id."""
    found = {}
    for result in markers:
        item = result.get("item") or {}
        content = result.get("content")
        found[item.get("engine")] = base64.b64decode(content).decode().strip() if content else ""
    return [spec for spec in specs if found.get(spec["engine"], "") != spec["id"]]


def _flag(argv: list[str], name: str, value: Any) -> None:
    if value is not None and value != "":
        argv += [name, str(value)]


def _engine_command(
    model: dict[str, Any], port: int, paths: dict[str, str], cuda_archs: list[str], accelerator: str
) -> tuple[list[str], str]:
    """(argv, working directory) for one model's engine."""
    backend = model["backend"]
    served = model["served_name"]
    ctx = model.get("context_length")
    tp = model.get("tensor_parallel")
    quant = model.get("quantization")
    extra = [str(a) for a in model.get("extra_args", [])]
    workdir = paths["base_dir"]
    listen = ["--host", LOCAL, "--port", str(port)]
    if backend == "llamacpp":
        argv = [paths["llama_server"], "--model", model["model"], "--alias", served, *listen]
        _flag(argv, "--ctx-size", ctx)
        if accelerator == "cuda":
            _flag(argv, "--n-gpu-layers", model.get("gpu_layers", "all"))
            split = model.get("gpu_split")
            if split:
                argv += ["--tensor-split", ",".join(str(s) for s in split)]
        else:
            argv += ["--n-gpu-layers", "0"]
        _flag(argv, "--parallel", model.get("parallel"))
    elif backend == "sglang":
        launch = [paths["sglang_python"], "-m", "sglang.launch_server", "--model-path", model["model"]]
        argv = [*launch, "--served-model-name", served, *listen]
        _flag(argv, "--context-length", ctx)
        _flag(argv, "--tp-size", tp)
        _flag(argv, "--quantization", quant)
        if quant in ("awq", "awq_marlin"):
            argv += ["--dtype", "half"]
        _flag(argv, "--mem-fraction-static", model.get("mem_fraction"))
        if any(a.startswith("12") for a in cuda_archs) and "--attention-backend" not in extra:
            argv += ["--attention-backend", "flashinfer"]  # fa3/trtllm kernels do not run on sm_120
        argv.append("--sleep-on-idle")
        if model.get("evict") == "sleep":
            # Without the CPU backup, release_memory_occupation discards the weights and resume maps
            # empty memory (0.5.19 model_runner_components/load_model_utils.py:268-287).
            argv += ["--enable-memory-saver", "--enable-weights-cpu-backup"]
    elif backend == "vllm":
        argv = [paths["vllm_bin"], "serve", model["model"], "--served-model-name", served, *listen]
        _flag(argv, "--max-model-len", ctx)
        _flag(argv, "--tensor-parallel-size", tp)
        _flag(argv, "--quantization", quant)
        _flag(argv, "--gpu-memory-utilization", model.get("mem_fraction"))
        if model.get("evict") == "sleep":
            argv.append("--enable-sleep-mode")
        # The engine key on every route, not only /v1 (files/llm_router_engine_auth.py; vllm 0.32.0
        # entrypoints/launchers/cli_args.py:351-356 `--middleware`, 0.19.1 entrypoints/openai/cli_args.py:260).
        argv += ["--middleware", VLLM_AUTH_MIDDLEWARE]
    elif backend == "tabbyapi":
        exl2 = str(model.get("format", "")).lower() == "exl2"
        checkout = paths["tabbyapi_exl2_dir"] if exl2 else paths["tabbyapi_dir"]
        argv = [
            f"{checkout}/venv/bin/python",
            "main.py",
            "--config",
            f"{paths['config_dir']}/tabbyapi/{model['slug']}/config.yml",
        ]
        # TabbyAPI reads api_tokens.yml from its working directory: one key pair per checkout.
        model["api_tokens_file"] = f"{checkout}/api_tokens.yml"
        workdir = checkout
    else:
        raise FilterError(f"backend {backend!r} has no engine command")
    return argv + extra, workdir


# Engines the role gives their own API key (`<config_dir>/engine-keys/<slug>.key`, handed to the unit by systemd
# LoadCredential=; templates/model-start.sh.j2 passes it on). TabbyAPI has its own api_tokens.yml.
KEYED_BACKENDS = ("llamacpp", "sglang", "vllm")
VLLM_AUTH_MIDDLEWARE = "llm_router_engine_auth.RequireKey"


def engine_key_file(config_dir: str, slug: str) -> str:
    """Where the role keeps a local model's engine key (read by the router as the model's api_key_file)."""
    return f"{config_dir}/engine-keys/{slug}.key"


# vLLM refuses to start when free memory < total x gpu_memory_utilization (0.33.0 vllm/v1/worker/utils.py:716-766;
# default 0.9); a sleeping SGLang/vLLM on the same GPUs keeps its CUDA context, graphs and NCCL buffers.
VLLM_SHARED_MEM_FRACTION = 0.8
GPU_BACKENDS = ("sglang", "vllm", "tabbyapi")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _gpu_list(value: Any) -> list[str]:
    """gpus as given ("0,1", 0, [0, 1]) -> ["0", "1"]."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(g).strip() for g in items if str(g).strip()]


def _gpu_set(model: dict[str, Any]) -> set[str] | None:
    """The CUDA_VISIBLE_DEVICES of a model as a set; None means all GPUs."""
    gpus = _gpu_list(model.get("gpus"))
    return set(gpus) if gpus else None


def _shares_gpus(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = _gpu_set(a), _gpu_set(b)
    return sa is None or sb is None or bool(sa & sb)


def _vllm_default_mem_fraction(model: dict[str, Any], models: list[dict[str, Any]]) -> float | None:
    """0.8 for a vLLM model that shares GPUs with a model that sleeps (keeps memory); else vLLM's own default."""
    for other in models:
        if other is model or other.get("backend") not in GPU_BACKENDS or other.get("evict") != "sleep":
            continue
        if _shares_gpus(model, other):
            return VLLM_SHARED_MEM_FRACTION
    return None


# Default engine ports: base + crc32(slug) % ENGINE_PORT_SPAN (8100-8999 by default), so a port depends on the
# model's id only and inserting, removing or reordering other models does not move it.
ENGINE_PORT_SPAN = 900


def engine_ports(models: list[dict[str, Any]], base_port: int) -> dict[int, int]:
    """List index -> port for every local model: its explicit `port`, else a stable port from its slug.

    Explicit ports are taken first; then, in slug order, each other model takes base + crc32(slug) % span,
    or the next free port in the span (wrapping) if that is taken, so only models whose slots collide move.
    """
    if not 0 < base_port <= 65536 - ENGINE_PORT_SPAN:
        raise FilterError(f"llm_router_engine_base_port {base_port}: needs {ENGINE_PORT_SPAN} ports up to 65535")
    ports: dict[int, int] = {}
    hashed: list[tuple[str, int]] = []
    for index, model in enumerate(models):
        if not isinstance(model, dict) or model.get("backend") == "openai" or not model.get("id"):
            continue
        if model.get("port"):
            ports[index] = int(model["port"])
        else:
            hashed.append((model_slug(str(model["id"])), index))
    taken = set(ports.values())
    for slug, index in sorted(hashed):
        offset = zlib.crc32(slug.encode()) % ENGINE_PORT_SPAN
        for step in range(ENGINE_PORT_SPAN):
            port = base_port + (offset + step) % ENGINE_PORT_SPAN
            if port not in taken:
                break
        else:
            raise FilterError(f"no free engine port in {base_port}-{base_port + ENGINE_PORT_SPAN - 1}")
        ports[index] = port
        taken.add(port)
    return ports


def normalize_models(
    models: list[dict[str, Any]],
    base_port: int = 8100,
    paths: dict[str, str] | None = None,
    cuda_archs: list[str] | None = None,
    accelerator: str = "cuda",
    cuda_home: str = "",
) -> list[dict[str, Any]]:
    """Validate inventory models and add what the templates need: slug, port, unit, argv, env, workdir.

    cuda_home: the CUDA toolkit, exported as CUDA_HOME (and its bin/ first on PATH) to the GPU engines
    so Triton/FlashInfer JIT find nvcc; empty when the host has no toolkit.
    """
    paths = paths or {}
    cuda_archs = cuda_archs or []
    used_ports: dict[int, str] = {}
    default_ports = engine_ports(models, base_port)
    seen: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for index, source in enumerate(models):
        model = dict(source)
        where = f"llm_router_models[{index}]"
        for key in ("id", "backend"):
            if not model.get(key):
                raise FilterError(f"{where}: '{key}' is required")
        if model["backend"] not in BACKENDS:
            raise FilterError(f"{where} ({model['id']}): backend {model['backend']!r}; allowed: {', '.join(BACKENDS)}")
        model["slug"] = model_slug(model["id"])
        for name in [model["id"], model["slug"], *model.get("aliases", [])]:
            if name in seen and seen[name] != model["id"]:
                raise FilterError(f"{where}: name {name!r} clashes with model {seen[name]!r}")
            seen[name] = model["id"]
        if model.get("gpus") is not None:
            model["gpus"] = ",".join(_gpu_list(model["gpus"]))  # "0,1", 0 and [0, 1] alike
        model.setdefault("served_name", model["id"])
        model.setdefault("evict", "stop")
        model.setdefault("group", "default")
        model.setdefault("env", {})
        if model["backend"] == "openai":
            if not model.get("url"):
                raise FilterError(f"{where} ({model['id']}): backend openai needs 'url'")
            out.append(model)
            continue
        if not model.get("model"):
            raise FilterError(f"{where} ({model['id']}): 'model' (path or name of the weights) is required")
        port = default_ports[index]
        if port in used_ports:
            raise FilterError(f"{where} ({model['id']}): port {port} is already used by {used_ports[port]!r}")
        used_ports[port] = model["id"]
        model["port"] = port
        model["unit"] = f"llm-model@{model['slug']}.service"
        if model["backend"] == "vllm" and model.get("mem_fraction") is None:
            fraction = _vllm_default_mem_fraction(source, models)
            if fraction is not None:
                model["mem_fraction"] = fraction
        model["argv"], model["workdir"] = _engine_command(model, port, paths, cuda_archs, accelerator)
        env = {str(k): str(v) for k, v in model["env"].items()}
        if model.get("gpus") is not None and accelerator == "cuda":
            env.setdefault("CUDA_VISIBLE_DEVICES", str(model["gpus"]))
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # indices as nvidia-smi/NVML number them
        if model["backend"] == "vllm" and model["evict"] == "sleep":
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")
        if model["backend"] in KEYED_BACKENDS:
            model["api_key_file"] = engine_key_file(paths.get("config_dir", "/etc/llm-router"), model["slug"])
        if model["backend"] == "vllm":
            lib = f"{paths.get('base_dir', '/opt/llm-router')}/lib/python"  # the --middleware module
            env["PYTHONPATH"] = f"{lib}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else lib
        if model["backend"] in GPU_BACKENDS and accelerator == "cuda" and cuda_home:
            env.setdefault("CUDA_HOME", cuda_home)
            env.setdefault("PATH", f"{cuda_home}/bin:{SYSTEM_PATH}")
        model["env"] = env
        out.append(model)
    return out


# Inventory model keys the router's config takes as they are (docs/config.md).
ROUTER_MODEL_KEYS = (
    "load_timeout_s",
    "health_path",
    "context_length",
    "mem_fraction",
    "parallel",
    "memory",
    "sleep_memory",
    "pinned",
    "preload",
    "ttl_s",
    "on_abandon",
    "defaults",
    "overrides",
    "strip",
)


# The TabbyAPI config.yml inputs (templates/tabbyapi-config.yml.j2) besides argv/env/workdir.
TABBY_CONFIG_KEYS = ("port", "model", "context_length", "cache_size", "tensor_parallel", "gpu_split", "cache_mode")


def engine_key(model: dict[str, Any]) -> str:
    """Which installed engine runs a model: llamacpp, sglang, vllm, tabbyapi or tabbyapi_exl2 (EXL2 checkout)."""
    if model["backend"] == "tabbyapi" and str(model.get("format", "")).lower() == "exl2":
        return "tabbyapi_exl2"
    return str(model["backend"])


def model_revision(model: dict[str, Any], engine_ids: dict[str, str]) -> str:
    """A short hash of everything that shapes a local model's running engine (sha256, 16 hex).

    argv, env, working directory, the TabbyAPI config inputs and the install identity of its engine
    (llama.cpp build id, pip engine install id, which includes the TabbyAPI commit). It is the model's
    `revision` in config.yml: when it changes, a config reload drains and restarts that model alone.
    """
    tabby = {k: model.get(k) for k in TABBY_CONFIG_KEYS} if model["backend"] == "tabbyapi" else None
    identity = {
        "argv": [str(a) for a in model.get("argv", [])],
        "env": {str(k): str(v) for k, v in (model.get("env") or {}).items()},
        "workdir": str(model.get("workdir", "")),
        "tabbyapi": tabby,
        "engine": str(engine_ids.get(engine_key(model), "")),
        "api_key_file": str(model.get("api_key_file") or ""),  # the path only, never the key
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def router_config(
    models: list[dict[str, Any]],
    settings: dict[str, Any],
    config_dir: str,
    engine_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The router's config.yml (docs/config.md) for normalized models.

    engine_ids: engine (engine_key) -> install identity; given, each local model gets a `revision`.
    """
    entries = []
    for model in models:
        entry: dict[str, Any] = {"id": model["id"], "backend": model["backend"]}
        if model.get("aliases"):
            entry["aliases"] = list(model["aliases"])
        if model.get("description"):
            entry["description"] = model["description"]
        if model["served_name"] != model["id"]:
            entry["served_name"] = model["served_name"]
        if model["group"] != "default":
            entry["group"] = model["group"]
        if model["evict"] != "stop":
            entry["evict"] = model["evict"]
        for key in ROUTER_MODEL_KEYS:
            if model.get(key) is not None:
                entry[key] = model[key]
        if model["backend"] == "openai":
            entry["url"] = model["url"]
            if model.get("api_key_file"):
                entry["api_key_file"] = model["api_key_file"]
        else:
            entry["port"] = model["port"]
            entry["unit"] = model["unit"]
            if model.get("api_key_file"):
                entry["api_key_file"] = model["api_key_file"]
            if engine_ids is not None:
                entry["revision"] = model_revision(model, engine_ids)
            if model.get("gpus") not in (None, ""):
                # Which GPUs it occupies, for memory-aware placement (NVML indices; CUDA_DEVICE_ORDER=PCI_BUS_ID).
                entry["devices"] = [g.strip() for g in str(model["gpus"]).split(",") if g.strip()]
            if model.get("model") and not str(model["model"]).startswith(("http://", "https://")):
                entry["weights"] = str(model["model"])  # the estimate before the first load reads it
            if model["backend"] == "tabbyapi":
                entry["api_tokens_file"] = model["api_tokens_file"]
                entry["tabby_model_name"] = model.get(
                    "tabby_model_name", str(model["model"]).rstrip("/").split("/")[-1]
                )
        entries.append(entry)
    return {"router": dict(settings), "models": entries}


def sudoers_commands(models: list[dict[str, Any]], systemctl: str = "/usr/bin/systemctl") -> list[str]:
    """Exact command lines the router may run as root: start/stop of its own model units, nothing else."""
    commands = []
    for model in models:
        if model.get("unit"):
            commands += [f"{systemctl} start {model['unit']}", f"{systemctl} stop {model['unit']}"]
    return commands


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_slug": model_slug,
            "llm_router_cuda_architectures": cuda_architectures,
            "llm_router_normalize_models": normalize_models,
            "llm_router_config": router_config,
            "llm_router_sudoers_commands": sudoers_commands,
            "llm_router_gpu_query": gpu_query,
            "llm_router_distro_pythons": distro_pythons,
            "llm_router_router_python": router_python,
            "llm_router_engine_plan": engine_plan,
            "llm_router_probed_pythons": probed_pythons,
            "llm_router_venv_specs": venv_specs,
            "llm_router_stale_venvs": stale_venvs,
        }
