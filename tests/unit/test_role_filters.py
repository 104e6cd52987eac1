"""The Ansible role's filters: inventory models -> engine command lines, unit names, router config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from router_app.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "llm_router_filters", ROOT / "roles/llm_router/filter_plugins/llm_router.py"
)
filters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(filters)

PATHS = {
    "base_dir": "/opt/llm-router",
    "config_dir": "/etc/llm-router",
    "llama_server": "/opt/llm-router/bin/llama-server",
    "sglang_python": "/opt/llm-router/engines/sglang/venv/bin/python",
    "vllm_bin": "/opt/llm-router/engines/vllm/venv/bin/vllm",
    "tabbyapi_dir": "/opt/llm-router/engines/tabbyapi/main",
    "tabbyapi_exl2_dir": "/opt/llm-router/engines/tabbyapi/exl2",
}


@pytest.mark.parametrize(
    ("caps", "archs"), [(["9.0", "12.0"], ["90", "120a"]), (["8.9", "9.0", "9.0"], ["89", "90"]), ([], [])]
)
def test_cuda_architectures(caps: list[str], archs: list[str]) -> None:
    assert filters.cuda_architectures(caps) == archs


def test_cuda_architectures_rejects_garbage() -> None:
    with pytest.raises(filters.FilterError, match=r"not like '9\.0'"):
        filters.cuda_architectures(["sm_90"])


def test_slug() -> None:
    assert filters.model_slug("Qwen/Qwen2.5-72B-Instruct-AWQ") == "qwen-qwen2-5-72b-instruct-awq"


def normalize(models, **kwargs):
    return filters.normalize_models(models, 8100, PATHS, kwargs.get("archs", ["90", "120a"]), kwargs.get("acc", "cuda"))


def test_engine_commands_carry_inventory_flags() -> None:
    models = normalize(
        [
            {
                "id": "q",
                "backend": "sglang",
                "model": "/m/q",
                "quantization": "awq",
                "tensor_parallel": 2,
                "context_length": 32768,
                "gpus": "0,1",
                "evict": "sleep",
            },
            {"id": "v", "backend": "vllm", "model": "/m/v", "context_length": 8192, "evict": "sleep", "port": 9000},
            {"id": "g", "backend": "llamacpp", "model": "/m/g.gguf", "gpu_split": [3, 1], "extra_args": ["--jinja"]},
            {"id": "t", "backend": "tabbyapi", "model": "/m/T-exl2", "format": "EXL2"},
            {"id": "r", "backend": "openai", "url": "https://example.invalid/v1"},
        ]
    )
    q, v, g, t, r = models
    assert q["argv"][:3] == [PATHS["sglang_python"], "-m", "sglang.launch_server"]
    for flag in (
        ["--tp-size", "2"],
        ["--quantization", "awq"],
        ["--dtype", "half"],
        ["--port", "8100"],
        ["--attention-backend", "flashinfer"],
        ["--host", "127.0.0.1"],
    ):
        assert " ".join(flag) in " ".join(q["argv"])
    assert "--sleep-on-idle" in q["argv"] and "--enable-memory-saver" in q["argv"]
    assert q["env"] == {"CUDA_VISIBLE_DEVICES": "0,1"} and q["unit"] == "llm-model@q.service"
    assert v["port"] == 9000 and "--enable-sleep-mode" in v["argv"] and v["env"]["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--tensor-split 3,1" in " ".join(g["argv"]) and g["argv"][-1] == "--jinja"
    assert "--n-gpu-layers all" in " ".join(g["argv"])
    assert t["workdir"] == PATHS["tabbyapi_exl2_dir"] and t["api_tokens_file"].endswith("exl2/api_tokens.yml")
    assert "unit" not in r


def test_cpu_mode_keeps_llama_on_cpu_and_no_flashinfer_on_hopper_only() -> None:
    (g,) = normalize([{"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"}], acc="cpu", archs=[])
    assert "--n-gpu-layers 0" in " ".join(g["argv"])
    (q,) = normalize([{"id": "q", "backend": "sglang", "model": "/m/q"}], archs=["90"])
    assert "--attention-backend" not in q["argv"]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [{"id": "a", "backend": "llamacpp", "model": "x"}, {"id": "A", "backend": "llamacpp", "model": "y"}],
            "clashes",
        ),
        (
            [
                {"id": "a", "backend": "llamacpp", "model": "x", "port": 8101},
                {"id": "b", "backend": "llamacpp", "model": "y"},
            ],
            "port 8101",
        ),
        ([{"id": "a", "backend": "ollama", "model": "x"}], "allowed:"),
        ([{"id": "a", "backend": "vllm"}], "'model'"),
    ],
)
def test_inventory_errors(models, message) -> None:
    with pytest.raises(filters.FilterError, match=message):
        normalize(models)


def test_rendered_router_config_is_valid_for_the_router() -> None:
    models = normalize(
        [
            {
                "id": "Qwen/Qwen2.5-7B",
                "aliases": ["qwen"],
                "backend": "sglang",
                "model": "/m/q",
                "evict": "sleep",
                "group": "gpu0",
            },
            {"id": "t", "backend": "tabbyapi", "model": "/m/T-exl3/"},
            {"id": "r", "backend": "openai", "url": "https://example.invalid/v1", "api_key_file": "/etc/k"},
        ]
    )
    settings = {"supervisor": "systemd", "systemctl": ["sudo", "-n", "/usr/bin/systemctl"], "port": 8002}
    config = parse_config(filters.router_config(models, settings, "/etc/llm-router"))
    qwen, tabby, remote = config.models
    assert qwen.unit == "llm-model@qwen-qwen2-5-7b.service" and qwen.port == 8100 and qwen.evict == "sleep"
    assert tabby.tabby_model_name == "T-exl3" and str(tabby.api_tokens_file).endswith("main/api_tokens.yml")
    assert remote.url == "https://example.invalid/v1"
    assert filters.sudoers_commands(models) == [
        "/usr/bin/systemctl start llm-model@qwen-qwen2-5-7b.service",
        "/usr/bin/systemctl stop llm-model@qwen-qwen2-5-7b.service",
        "/usr/bin/systemctl start llm-model@t.service",
        "/usr/bin/systemctl stop llm-model@t.service",
    ]
