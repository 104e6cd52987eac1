"""Filters that fit the engines to the host: CUDA architectures and driver from nvidia-smi, the Pythons it has,
each venv engine's install lane (engine_plan) and its venv spec with an install id, so a second run installs
nothing. Pure Python, unit-tested in tests/unit/test_role_filters.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any


class FilterError(Exception):
    pass


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


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_cuda_architectures": cuda_architectures,
            "llm_router_gpu_query": gpu_query,
            "llm_router_distro_pythons": distro_pythons,
            "llm_router_router_python": router_python,
            "llm_router_engine_plan": engine_plan,
            "llm_router_probed_pythons": probed_pythons,
            "llm_router_venv_specs": venv_specs,
            "llm_router_stale_venvs": stale_venvs,
        }
