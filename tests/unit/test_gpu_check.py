"""scripts/gpu_check.py, the GPU check for a lent machine: its judges fail what they name, its build uses the role's
own CMake arguments, and its router config (rendered by the role's filters) is one the router accepts and that
sizes the models so that two fit on the GPU and three do not."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import jinja2
import pytest
import yaml

from router_app.config import load_config
from router_app.memory.estimate import estimate_footprint
from tests.modules import load_script

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024**2


gc = load_script("gpu_check")


# --- the role's CMake arguments ------------------------------------------------------------------------------------


def role_cmake(accelerator: str, archs: list[str]) -> list[str]:
    """roles/llm_router/vars/main.yml `_llm_router_llamacpp_cmake`, rendered with Ansible's own filters."""
    from ansible.plugins.filter.core import FilterModule

    expression = yaml.safe_load((ROOT / "roles/llm_router/vars/main.yml").read_text())["_llm_router_llamacpp_cmake"]
    env = jinja2.Environment()
    env.filters.update(FilterModule().filters())
    text = env.from_string(expression).render(
        llm_router_llamacpp_version="b11312",
        llm_router_accelerator=accelerator,
        _llm_router_cuda_archs=archs,
        llm_router_cuda_home="/usr/local/cuda",
        llm_router_llamacpp_cmake_args=[],
    )
    return ast.literal_eval(text)


@pytest.mark.parametrize(("accelerator", "archs"), [("cuda", ["90"]), ("cuda", ["90", "120a"]), ("cpu", [])])
def test_the_build_uses_the_roles_cmake_arguments(accelerator: str, archs: list[str]) -> None:
    assert gc.role_cmake_args(accelerator, archs, "/usr/local/cuda", "b11312") == role_cmake(accelerator, archs)


def test_the_llamacpp_version_is_the_roles() -> None:
    defaults = yaml.safe_load((ROOT / "roles/llm_router/defaults/main.yml").read_text())
    assert gc.llamacpp_version() == defaults["llm_router_llamacpp_version"]


# --- judges ----------------------------------------------------------------------------------------------------------


def test_capacity_must_match_nvidia_smi() -> None:
    assert gc.judge_capacity(143771 * MiB + 12345, 143771).ok
    assert not gc.judge_capacity(143771 * MiB - 1, 143771).ok  # one MiB short: not NVML's total
    assert not gc.judge_capacity(None, 143771).ok  # no GPU in /health: the router runs without NVML


def test_footprint_must_be_within_tolerance_of_the_estimate() -> None:
    estimate = 57_000 * MiB
    assert gc.judge_footprint("a", int(estimate * 1.049), estimate).ok
    assert gc.judge_footprint("a", int(estimate * 0.951), estimate).ok
    assert not gc.judge_footprint("a", int(estimate * 1.06), estimate).ok  # the estimate undercounts
    assert not gc.judge_footprint("a", int(estimate * 0.90), estimate).ok  # the estimate overcounts
    assert not gc.judge_footprint("a", None, estimate).ok  # NVML saw no process memory


def test_co_residency_needs_both_ready_and_measured_within_the_device() -> None:
    capacity = 140_000 * MiB
    measured = {"a": 58_000 * MiB, "b": 58_000 * MiB}
    assert gc.judge_coresident({"a": "ready", "b": "ready"}, measured, capacity).ok
    assert not gc.judge_coresident({"a": "stopped", "b": "ready"}, measured, capacity).ok
    assert not gc.judge_coresident({"a": "ready", "b": "ready"}, {"a": 58_000 * MiB, "b": None}, capacity).ok
    assert not gc.judge_coresident({"a": "ready", "b": "ready"}, {"a": 80_000 * MiB, "b": 80_000 * MiB}, capacity).ok


def test_eviction_by_real_vram() -> None:
    states = {"a": "stopped", "b": "ready", "c": "ready"}
    good = {"free_before": 26_000 * MiB, "needed": 57_000 * MiB, "states": states, "newcomer": "c"}
    assert gc.judge_eviction(**good, gone={"a": True}, memory_evictions=1).ok
    # It fitted without evicting anything: the check would prove nothing.
    assert not gc.judge_eviction(**{**good, "free_before": 60_000 * MiB}, gone={"a": True}, memory_evictions=1).ok
    # Nothing evicted (the router over-committed), or both.
    both_ready = {**good, "states": {"a": "ready", "b": "ready", "c": "ready"}}
    assert not gc.judge_eviction(**both_ready, gone={}, memory_evictions=0).ok
    both_gone = {**good, "states": {"a": "stopped", "b": "stopped", "c": "ready"}}
    assert not gc.judge_eviction(**both_gone, gone={"a": True, "b": True}, memory_evictions=1).ok
    # The evicted engine still holds the GPU, the newcomer failed, or the router did not count it as a memory eviction.
    assert not gc.judge_eviction(**good, gone={"a": False}, memory_evictions=1).ok
    failed = {**good, "states": {"a": "stopped", "b": "ready", "c": "failed"}}
    assert not gc.judge_eviction(**failed, gone={"a": True}, memory_evictions=1).ok
    assert not gc.judge_eviction(**good, gone={"a": True}, memory_evictions=0).ok


def test_memory_must_come_back_after_the_stop() -> None:
    base = 600 * MiB
    assert gc.judge_freed(base, base + gc.FREED_SLACK, 117_000 * MiB, [], 1.2).ok
    assert not gc.judge_freed(base, base + gc.FREED_SLACK + MiB, 117_000 * MiB, [], 60.0).ok
    assert not gc.judge_freed(base, base, 117_000 * MiB, [4242], 60.0).ok


# --- models and config -----------------------------------------------------------------------------------------------


def test_model_file_size_formula_matches_a_written_model(tmp_path: Path) -> None:
    """context_for() sizes the context from model_file_bytes(): it must not undercount a real file."""
    from router_app.tools.tiny_gguf import write_model

    g = gc.CPU_GEOMETRY
    path = write_model(
        tmp_path / "m.gguf", layers=g["layers"], dim=g["dim"], heads=g["heads"], ff=g["ff"], head_dim=g["head_dim"]
    )
    size = path.stat().st_size
    assert size <= gc.model_file_bytes(g) <= size + 2 * MiB


@pytest.mark.parametrize("total_mib", [143771, 81559, 97887])  # H200, H100 80GB, RTX PRO 6000
def test_dry_run_config_is_accepted_and_two_models_fit_three_do_not(tmp_path: Path, total_mib: int) -> None:
    capacity = total_mib * MiB
    g = gc.GPU_GEOMETRY
    setup = gc.Setup("dry-run", tmp_path / "llama-server", capacity, gc.context_for(capacity, g), g, ["90"])
    path, _, _, _ = gc.write_config(setup, tmp_path)
    config = load_config(path)  # what `llm-router check-config` runs
    assert config.router.supervisor == "process" and config.router.memory.source == "nvml"
    assert [m.id for m in config.models] == list(gc.MODELS)
    for model in config.models:
        # The role's argv (model-start.sh adds the key file) on GPU 0.
        assert model.command[:2] == [str(tmp_path / "llama-server"), "--model"]
        assert model.command[-8:] == [
            *("--n-gpu-layers", "all", "--load-mode", "none"),
            *("--slot-save-path", str(tmp_path / "slots" / model.id)),
            *("--api-key-file", str(model.api_key_file)),
        ]
        assert model.slot_dir == tmp_path / "slots" / model.id  # KV continuity, in the work directory
        assert model.env["CUDA_VISIBLE_DEVICES"] == "0" and model.devices == ["0"]
        # The estimate the router will make before the first load, with the file the generator will write.
        kv = setup.context * gc.kv_bytes_per_token(g)
        estimate = gc.model_file_bytes(g) + kv + 64 * MiB
        # Even where the engine uses FOOTPRINT_TOLERANCE more or less than estimated: two fit, three do not.
        tolerance = gc.FOOTPRINT_TOLERANCE
        assert 2 * estimate * (1 + tolerance) < capacity < 3 * estimate * (1 - tolerance)
    assert estimate_footprint(config.models[0], capacity, 1) is None  # no file yet: the generator writes it at run


def test_the_check_config_command_accepts_it(tmp_path: Path) -> None:
    capacity = 143771 * MiB
    setup = gc.Setup("dry-run", tmp_path / "ls", capacity, gc.context_for(capacity, gc.GPU_GEOMETRY), gc.GPU_GEOMETRY)
    path, _, _, _ = gc.write_config(setup, tmp_path)
    check = gc.check_config(path, dict(os.environ))
    assert check.ok, check.line()
    path.write_text(path.read_text().replace('"supervisor": "process"', '"supervisor": "proces"'))
    assert not gc.check_config(path, dict(os.environ)).ok
