"""The Ansible role's filters: inventory models -> engine command lines, unit names, router config."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from router_app.config import parse_config
from tests.modules import load_module, load_script
from tests.role_render import PATHS, ROLE, load_filter, models_f, normalize, render  # models_f: normalisation, ports

ROOT = Path(__file__).resolve().parents[2]


engines_f = load_filter("llm_router_engines")  # CUDA archs, Pythons, install lanes, venvs
config_f = load_filter("llm_router_config")  # the router's config.yml, sudoers


def test_each_filter_has_one_module_and_every_used_filter_exists() -> None:
    """Ansible loads every filter_plugins/*.py as a plugin of its own and keys filters by name alone: a name
    defined twice would shadow the other, one the role calls but no module defines fails only at run time."""
    names = [
        name
        for path in sorted((ROOT / "roles/llm_router/filter_plugins").glob("*.py"))
        for name in load_filter(path.stem).FilterModule().filters()
    ]
    assert len(names) == len(set(names))
    sources = [
        p for d in ("roles", "molecule", "playbooks") for p in (ROOT / d).rglob("*") if p.suffix in (".yml", ".j2")
    ]
    used = {name for p in sources for name in re.findall(r"\|[ \t]*(llm_router_\w+)", p.read_text())}
    assert used and used <= set(names), used - set(names)


@pytest.mark.parametrize(
    ("caps", "archs"), [(["9.0", "12.0"], ["90", "120a"]), (["8.9", "9.0", "9.0"], ["89", "90"]), ([], [])]
)
def test_cuda_architectures(caps: list[str], archs: list[str]) -> None:
    assert engines_f.cuda_architectures(caps) == archs


def test_cuda_architectures_rejects_garbage() -> None:
    with pytest.raises(engines_f.FilterError, match=r"not like '9\.0'"):
        engines_f.cuda_architectures(["sm_90"])


def test_slug() -> None:
    assert models_f.model_slug("Qwen/Qwen2.5-72B-Instruct-AWQ") == "qwen-qwen2-5-72b-instruct-awq"


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
        ["--port", str(q["port"])],
        ["--attention-backend", "flashinfer"],
        ["--host", "127.0.0.1"],
    ):
        assert " ".join(flag) in " ".join(q["argv"])
    assert "--sleep-on-idle" in q["argv"] and "--enable-memory-saver" in q["argv"]
    # PCI bus order: the indices in `gpus` are nvidia-smi's and NVML's, which the router's placement counts with.
    assert {k: q["env"][k] for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")} == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert q["unit"] == "llm-model@q.service"
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
                {"id": "b", "backend": "llamacpp", "model": "y", "port": 8101},
            ],
            "port 8101",
        ),
        ([{"id": "a", "backend": "ollama", "model": "x"}], "allowed:"),
        ([{"id": "a", "backend": "vllm"}], "'model'"),
    ],
)
def test_inventory_errors(models, message) -> None:
    with pytest.raises(models_f.FilterError, match=message):
        normalize(models)


def test_engine_ports_do_not_move_when_the_model_list_changes() -> None:
    """Default port = base + crc32(slug) % ENGINE_PORT_SPAN: inserting a model at the front, removing one or
    reordering the list leaves every other model's port (and so its start script and unit) unchanged."""
    listed = [{"id": name, "backend": "llamacpp", "model": f"/m/{name}.gguf"} for name in ("a", "b", "c", "d")]
    before = {m["id"]: m["port"] for m in normalize(listed)}
    inserted = normalize([{"id": "new", "backend": "vllm", "model": "/m/n"}, *listed])
    assert {m["id"]: m["port"] for m in inserted[1:]} == before
    reordered = normalize([*listed[::-1], {"id": "r", "backend": "openai", "url": "https://example.invalid/v1"}])
    assert {m["id"]: m.get("port") for m in reordered} == before | {"r": None}
    assert {m["id"]: m["port"] for m in normalize(listed[1:])} == {k: v for k, v in before.items() if k != "a"}
    assert all(8100 <= port < 8100 + models_f.ENGINE_PORT_SPAN for port in before.values())
    assert before["a"] == 8100 + models_f.zlib.crc32(b"a") % models_f.ENGINE_PORT_SPAN


def test_engine_port_collisions_resolve_in_slug_order_and_explicit_ports_win() -> None:
    span = models_f.ENGINE_PORT_SPAN
    slot = {s: models_f.zlib.crc32(s.encode()) % span for s in (f"m{i}" for i in range(200))}
    by_slot: dict[int, list[str]] = {}
    for slug, offset in slot.items():
        by_slot.setdefault(offset, []).append(slug)
    first, second = sorted(next(group for group in by_slot.values() if len(group) >= 2))[:2]
    models = [{"id": i, "backend": "llamacpp", "model": "/m/x.gguf"} for i in (second, first)]
    ports = {m["id"]: m["port"] for m in normalize(models)}
    # The slug that sorts first keeps its slot, whatever the list order; the other takes the next free port.
    assert ports == {first: 8100 + slot[first], second: 8100 + (slot[first] + 1) % span}
    taken = 8100 + slot[first]
    explicit = normalize([*models, {"id": "pinned", "backend": "vllm", "model": "/m/p", "port": taken}])
    assert {m["id"]: m["port"] for m in explicit}["pinned"] == taken
    assert taken not in [m["port"] for m in explicit if m["id"] != "pinned"]
    with pytest.raises(models_f.FilterError, match="llm_router_engine_base_port 65000"):
        models_f.normalize_models(models, 65000, PATHS, ["90"], "cuda")


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
    config = parse_config(config_f.router_config(models, settings, "/etc/llm-router"))
    qwen, tabby, remote = config.models
    assert qwen.unit == "llm-model@qwen-qwen2-5-7b.service" and qwen.port == models[0]["port"] and qwen.evict == "sleep"
    assert tabby.tabby_model_name == "T-exl3" and str(tabby.api_tokens_file).endswith("main/api_tokens.yml")
    assert remote.url == "https://example.invalid/v1"
    assert config_f.sudoers_commands(models) == [
        "/usr/bin/systemctl start llm-model@qwen-qwen2-5-7b.service",
        "/usr/bin/systemctl stop llm-model@qwen-qwen2-5-7b.service",
        "/usr/bin/systemctl start llm-model@t.service",
        "/usr/bin/systemctl stop llm-model@t.service",
    ]


def test_llamacpp_load_mode_mmap_on_cpu_none_with_gpu_offload_and_dio_turns_off_page_cache_warming() -> None:
    """b11312 --load-mode (common/arg.cpp:2691-2707); docs/benchmarks.md §8 for the defaults."""
    models = [
        {"id": "gpu", "backend": "llamacpp", "model": "/m/a.gguf"},
        {"id": "cpu-layers", "backend": "llamacpp", "model": "/m/b.gguf", "gpu_layers": 0},
        {"id": "dio", "backend": "llamacpp", "model": "/m/c.gguf", "load_mode": "dio"},
        {"id": "own", "backend": "llamacpp", "model": "/m/d.gguf", "extra_args": ["-lm", "mlock"]},
    ]
    gpu, cpu_layers, dio, own = normalize(models)
    modes = [
        m["argv"][m["argv"].index("--load-mode") + 1] if "--load-mode" in m["argv"] else None
        for m in (gpu, cpu_layers, dio, own)
    ]
    assert modes == ["none", "mmap", "dio", None]
    assert own["argv"][-2:] == ["-lm", "mlock"]
    (on_cpu,) = normalize([{"id": "c", "backend": "llamacpp", "model": "/m/a.gguf"}], acc="cpu", archs=[])
    assert on_cpu["argv"][on_cpu["argv"].index("--load-mode") + 1] == "mmap"
    config = parse_config(
        config_f.router_config([gpu, cpu_layers, dio, own], {"supervisor": "systemd"}, "/etc/llm-router")
    )
    assert [m.page_cache for m in config.models] == [True, True, False, True]


def test_llamacpp_models_keep_their_kv_cache_across_switches_unless_told_not_to() -> None:
    """KV continuity: llama-server b11312 --slot-save-path (common/arg.cpp:3614-3625: an existing directory) and the
    same directory as the model's slot_dir in the router's config; the unit may write there."""
    on, off, own, vllm = normalize(
        [
            {"id": "a", "backend": "llamacpp", "model": "/m/a.gguf"},
            {"id": "b", "backend": "llamacpp", "model": "/m/b.gguf", "kv_continuity": False},
            {"id": "c", "backend": "llamacpp", "model": "/m/c.gguf", "extra_args": ["--slot-save-path", "/srv/kv"]},
            {"id": "d", "backend": "vllm", "model": "/m/d"},
        ]
    )
    assert " ".join(on["argv"]).endswith("--slot-save-path /var/lib/llm-router/slots/a")
    assert "--slot-save-path" not in off["argv"] + vllm["argv"]
    assert own["argv"].count("--slot-save-path") == 1
    config = parse_config(config_f.router_config([on, off, own, vllm], {"supervisor": "systemd"}, "/etc/llm-router"))
    assert [m.slot_dir for m in config.models] == [Path("/var/lib/llm-router/slots/a"), None, Path("/srv/kv"), None]
    unit = (ROLE / "templates" / "llm-model@.service.j2").read_text()
    assert "ReadWritePaths=-{{ llm_router_state_dir }}/slots\n" in unit
    assert errors([{"id": "m", "backend": "vllm", "model": "/srv/m", "kv_continuity": True}]) == [
        "model 'm': 'kv_continuity' has no effect on backend vllm (only llamacpp). Fix: remove it."
    ]


# --- Engine command lines, env and configs against the engines' sources (engine-audit.md) ---------------------


def test_sglang_sleep_keeps_weights_in_cpu_backup() -> None:
    """Flag in every SGLang lane: sglang 0.5.10.post1 wheel sglang/srt/server_args.py:5561-5566 (cu12 lane);
    0.5.23 sglang/srt/arg_groups/fields/exec_.py:58-65, named by arg_groups/arg_utils.py:290 ("--" + name with
    "-") (cu13 lane). Without the backup the weights region is discarded on release (0.5.19
    model_runner_components/load_model_utils.py:268-287)."""
    sleep, stop = normalize(
        [
            {"id": "s", "backend": "sglang", "model": "/m/s", "evict": "sleep"},
            {"id": "t", "backend": "sglang", "model": "/m/t"},
        ]
    )
    assert sleep["argv"][-2:] == ["--enable-memory-saver", "--enable-weights-cpu-backup"]
    assert "--enable-weights-cpu-backup" not in stop["argv"] and "--enable-memory-saver" not in stop["argv"]


def test_vllm_leaves_room_for_sleeping_neighbours() -> None:
    """vllm 0.32.0 vllm/v1/worker/utils.py:716-766: start fails when free memory < total x gpu_memory_utilization
    (default 0.9); a sleeping SGLang/vLLM on the same GPUs keeps its context and graphs (engine-audit.md #9)."""
    sleeper = {"id": "s", "backend": "sglang", "model": "/m/s", "evict": "sleep", "gpus": "0,1"}
    shared, apart, explicit = normalize(
        [
            sleeper,
            {"id": "v", "backend": "vllm", "model": "/m/v", "gpus": "1"},
            {"id": "w", "backend": "vllm", "model": "/m/w", "gpus": "2"},
            {"id": "x", "backend": "vllm", "model": "/m/x", "mem_fraction": 0.85},
        ]
    )[1:]
    assert "--gpu-memory-utilization 0.8" in " ".join(shared["argv"])
    assert "--gpu-memory-utilization" not in apart["argv"]  # own GPU: vLLM's default
    assert "--gpu-memory-utilization 0.85" in " ".join(explicit["argv"])
    (alone,) = normalize([{"id": "v", "backend": "vllm", "model": "/m/v"}])
    assert "--gpu-memory-utilization" not in alone["argv"]


def test_gpu_engines_get_cuda_home_and_path() -> None:
    """FlashInfer's JIT runs `ninja` by name (flashinfer 0.6.7.post3 jit/cpp_ext.py:318, 0.7.2 :419), which pip puts
    in the venv's bin/ (sglang METADATA Requires-Dist: ninja): the venv first on PATH (engine-audit-2 #2); then the
    toolkit's bin/ for nvcc (Triton/FlashInfer read CUDA_HOME). systemd's EnvironmentFile does not expand $PATH,
    so PATH is written out."""
    models = normalize(
        [
            {"id": "s", "backend": "sglang", "model": "/m/s"},
            {"id": "v", "backend": "vllm", "model": "/m/v"},
            {"id": "t", "backend": "tabbyapi", "model": "/m/t"},
            {"id": "t2", "backend": "tabbyapi", "model": "/m/t2", "format": "exl2"},
            {"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"},
            {"id": "own", "backend": "sglang", "model": "/m/o", "env": {"PATH": "/mine"}},
        ],
        archs=["90"],
        cuda_home="/usr/local/cuda-13.0",
    )
    venvs = [
        PATHS["sglang_venv"],
        PATHS["vllm_venv"],
        PATHS["tabbyapi_dir"] + "/venv",
        PATHS["tabbyapi_exl2_dir"] + "/venv",
    ]
    for model, venv in zip(models[:4], venvs, strict=True):
        assert model["env"]["CUDA_HOME"] == "/usr/local/cuda-13.0"
        assert model["env"]["PATH"] == f"{venv}/bin:/usr/local/cuda-13.0/bin:{models_f.SYSTEM_PATH}"
        # The interpreter the engine runs is the one the PATH finds first.
        assert model["argv"][0].startswith(venv + "/bin/")
    assert "CUDA_HOME" not in models[4]["env"] and "PATH" not in models[4]["env"]
    assert models[5]["env"]["PATH"] == "/mine"  # the inventory's env wins
    (no_toolkit,) = normalize([{"id": "s", "backend": "sglang", "model": "/m/s"}])
    assert "CUDA_HOME" not in no_toolkit["env"]
    assert no_toolkit["env"]["PATH"] == f"{PATHS['sglang_venv']}/bin:{models_f.SYSTEM_PATH}"
    (on_cpu,) = normalize([{"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"}], acc="cpu", archs=[])
    assert on_cpu["env"] == {}


def test_vllm_sends_no_usage_stats() -> None:
    """vLLM reports usage to stats.vllm.ai unless VLLM_NO_USAGE_STATS/DO_NOT_TRACK is set (0.32.0
    usage/usage_lib.py:50-68): GPU boxes are often air-gapped, and the user did not ask for it."""
    (vllm, sglang) = normalize(
        [{"id": "v", "backend": "vllm", "model": "/m/v"}, {"id": "s", "backend": "sglang", "model": "/m/s"}]
    )
    assert vllm["env"]["VLLM_NO_USAGE_STATS"] == "1" and vllm["env"]["DO_NOT_TRACK"] == "1"
    assert "VLLM_NO_USAGE_STATS" not in sglang["env"]


def test_blackwell_engines_keep_ptx_jit_results() -> None:
    """vLLM's FlashAttention-2 has only sm_80 SASS + compute_80 PTX (vllm 0.19.1/0.32.0 _vllm_fa2_C.abi3.so), so on
    sm_120 the driver JIT-compiles it; a 4 GiB cache under HOME keeps the result (engine-audit-2 #10)."""
    (blackwell,) = normalize([{"id": "v", "backend": "vllm", "model": "/m/v"}], archs=["90", "120a"])
    assert blackwell["env"]["CUDA_CACHE_MAXSIZE"] == "4294967296"
    (hopper,) = normalize([{"id": "v", "backend": "vllm", "model": "/m/v"}], archs=["90"])
    assert "CUDA_CACHE_MAXSIZE" not in hopper["env"]


def test_directory_weights_lose_a_trailing_slash() -> None:
    """TabbyAPI's model_name is the basename of the path: '' for /srv/x/ (engine-audit-2 #12)."""
    (tabby, sglang) = normalize(
        [
            {"id": "t", "backend": "tabbyapi", "model": "/srv/m/Qwen-exl3/"},
            {"id": "s", "backend": "sglang", "model": "/srv/s//"},
        ]
    )
    assert tabby["model"] == "/srv/m/Qwen-exl3" and sglang["model"] == "/srv/s"
    config = yaml.safe_load(render("tabbyapi-config.yml.j2", item=tabby))
    assert (config["model"]["model_dir"], config["model"]["model_name"]) == ("/srv/m", "Qwen-exl3")


def test_tabbyapi_config_restores_the_configured_load_on_wake() -> None:
    """tabbyAPI@e632af4 common/tabby_config.py:49-56 copies each model.use_as_default key from config.yml into the
    defaults that common/model.py:79-136 (apply_load_defaults) merges under an API /v1/model/load; the keys
    exist in common/config_models.py:187-249 (max_seq_len, cache_size, cache_mode, tensor_parallel,
    gpu_split_auto, gpu_split)."""
    (model,) = normalize(
        [
            {
                "id": "q",
                "backend": "tabbyapi",
                "model": "/srv/m/Qwen3-32B-exl3",
                "context_length": 32768,
                "cache_mode": "Q8",
                "cache_size": 65536,
                "gpu_split": [20, 24],
                "tensor_parallel": 2,
            }
        ]
    )
    config = yaml.safe_load(render("tabbyapi-config.yml.j2", item=model))
    assert config["model"]["use_as_default"] == [
        "max_seq_len",
        "cache_size",
        "cache_mode",
        "gpu_split_auto",
        "gpu_split",
        "tensor_parallel",
    ]
    assert config["model"] | {"use_as_default": None} == {
        "model_dir": "/srv/m",
        "model_name": "Qwen3-32B-exl3",
        "inline_model_loading": False,
        "use_as_default": None,
        "max_seq_len": 32768,
        "cache_size": 65536,
        "tensor_parallel": True,
        "gpu_split_auto": False,
        "gpu_split": [20, 24],
        "cache_mode": "Q8",
    }
    assert config["network"] == {
        "host": "127.0.0.1",
        "port": model["port"],
        "disable_auth": False,
        "api_servers": ["OAI"],
    }


def model_unit(accelerator: str = "cuda", systemd: int = 252) -> list[str]:
    """The rendered llm-model@.service, one line per entry."""
    paths = {"tabbyapi_dir": PATHS["tabbyapi_dir"], "tabbyapi_exl2_dir": PATHS["tabbyapi_exl2_dir"]}
    return render(
        "llm-model@.service.j2",
        llm_router_engine_user="llm-engine",
        llm_router_config_dir="/etc/llm-router",
        llm_router_state_dir="/var/lib/llm-router",
        llm_router_base_dir="/opt/llm-router",
        llm_router_accelerator=accelerator,
        llm_router_nvidia_modprobe="/usr/bin/nvidia-modprobe",
        _llm_router_paths=paths,
        _llm_router_systemd_version=systemd,
    ).splitlines()


def test_engine_keys_logged_by_the_engines_stay_out_of_the_journal_on_systemd_253() -> None:
    """LogFilterPatterns= (systemd >= 253, extended regular expressions on MESSAGE; "~" drops what matches) against
    the lines the engines print: sglang 0.5.23 entrypoints/engine.py:311 logs server_args as a dict, 0.5.10.post1
    :648 as the dataclass repr; tabbyAPI@e632af4 common/auth.py:163-166 (79126f9 :81-82) prints both keys."""
    assert not [line for line in model_unit(systemd=252) if line.startswith("LogFilterPatterns")]
    patterns = [line.split("=~", 1)[1] for line in model_unit(systemd=255) if line.startswith("LogFilterPatterns=~")]
    logged = [
        "[2026-12-04 10:00:00] server_args={'model_path': '/srv/m', 'api_key': 'sk-secret', 'port': 8101}",
        "server_args=ServerArgs(model_path='/srv/m', api_key='sk-secret', port=8101)",
        "INFO:     Your API key is: 3f1c0e",
        "Your admin key is: 9ab2d1",
    ]
    kept = ["server_args={'model_path': '/srv/m', 'api_key': None}", "INFO:     Loading model modules: 12/64"]
    for line in logged:
        assert any(re.search(p, line) for p in patterns), line
    for line in kept:
        assert not any(re.search(p, line) for p in patterns), line


def test_model_unit_sets_no_device_policy() -> None:
    """Every key here that makes systemd install a device allow-list hides /dev/nvidia* from CUDA (EPERM). On systemd
    249 (Ubuntu 22.04) ProtectClock=yes is one: it adds DeviceAllow=char-rtc r, and with DevicePolicy=auto any
    allow entry closes every other device (systemd v249.11 src/core/unit.c:4120-4124, src/core/cgroup.c:1145-1148;
    fixed in v252 by 63857bf4; engine-audit-2 #1). PrivateDevices= hides them, DevicePolicy=closed/strict and
    DeviceAllow= close the rest. Molecule opens NVIDIA device nodes inside the unit
    (molecule/default/verify_sandbox.yml)."""
    keys = {line.split("=", 1)[0] for line in model_unit() if "=" in line and not line.startswith("#")}
    assert keys.isdisjoint({"ProtectClock", "PrivateDevices", "DevicePolicy", "DeviceAllow", "RootImage"}), keys


def test_gpu_units_create_the_uvm_node_as_root_before_the_engine() -> None:
    """NoNewPrivileges= stops the setuid nvidia-modprobe that libcuda runs to create /dev/nvidia-uvm (NVIDIA/enroot#106;
    engine-audit-2 #4): the unit runs it first, privileged ('+'), and carries on where it is missing ('-')."""
    assert "ExecStartPre=-+/usr/bin/nvidia-modprobe -u -c=0" in model_unit("cuda")
    assert not [line for line in model_unit("cpu") if line.startswith("ExecStartPre")]


def test_model_unit_lets_tabbyapi_write_its_logs() -> None:
    """tabbyAPI@e632af4 common/logger.py:122-128 (and @79126f9 the same) adds the loguru sink "logs/{time}.log"
    relative to the working directory, which loguru creates at add() time; the checkout is read-only under
    ProtectSystem=strict unless listed in ReadWritePaths (engine-audit.md #1)."""
    unit = model_unit()
    logs = "-/opt/llm-router/engines/tabbyapi/main/logs -/opt/llm-router/engines/tabbyapi/exl2/logs"
    assert f"ReadWritePaths={logs}" in unit
    assert "ProtectSystem=strict" in unit
    (model,) = normalize([{"id": "t", "backend": "tabbyapi", "model": "/m/T-exl3"}])
    script = render("model-start.sh.j2", item=model)
    assert f"cd {PATHS['tabbyapi_dir']}" in script  # templates/ and sampler_overrides/ are relative to it too


def test_start_scripts_exec_the_engine() -> None:
    """The unit's MainPID must be the engine itself: the router records it when it puts a model to sleep, and a
    restarted router adopts the engine asleep only if that PID still runs (SystemdSupervisor.pids is MainPID)."""
    for model in normalize(
        [
            {"id": "s", "backend": "sglang", "model": "/m/s", "evict": "sleep"},
            {"id": "v", "backend": "vllm", "model": "/m/v", "evict": "sleep"},
            {"id": "t", "backend": "tabbyapi", "model": "/m/t"},
            {"id": "g", "backend": "llamacpp", "model": "/m/g.gguf"},
        ]
    ):
        script = render("model-start.sh.j2", item=model)
        assert f"\nexec {shlex.quote(model['argv'][0])} " in script, (model["id"], script)


def test_model_env_file_quotes_values() -> None:
    (model,) = models_f.normalize_models(
        [{"id": "v", "backend": "vllm", "model": "/m/v", "evict": "sleep", "gpus": "0,1"}],
        8100,
        PATHS,
        ["90"],
        "cuda",
        cuda_home="/usr/local/cuda",
    )
    lines = render("model.env.j2", item=model).splitlines()
    assert "CUDA_HOME=/usr/local/cuda" in lines and "VLLM_SERVER_DEV_MODE=1" in lines
    assert "CUDA_VISIBLE_DEVICES=0,1" in lines
    path = "PATH=/opt/llm-router/engines/vllm/venv/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin"
    assert path + ":/usr/bin:/sbin:/bin" in lines


def test_llamacpp_build_turns_the_web_ui_off() -> None:
    """llama.cpp CMakeLists: LLAMA_BUILD_UI (default ON) runs ui-assets.cmake (npm if present) even with
    LLAMA_USE_PREBUILT_UI=OFF (engine-audit.md #12)."""
    cmake = yaml.safe_load((ROLE / "vars/main.yml").read_text())["_llm_router_llamacpp_cmake"]
    assert "'-DLLAMA_BUILD_UI=OFF'" in cmake and "'-DLLAMA_USE_PREBUILT_UI=OFF'" in cmake


def test_tabbyapi_pins_are_full_commits() -> None:
    """The git module compares `version` with the full HEAD SHA; a short one reports changed on every run."""
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert defaults["llm_router_tabbyapi_version"] == "e632af41eba68abeadc3437c62674360f2f8cbf1"
    assert defaults["llm_router_tabbyapi_exl2_version"] == "79126f904c2e00aece026b36bb70bbb87e4892b2"


# --- Install lanes and Pythons ----------------------------------------------------------------------------------

VARS = yaml.safe_load((ROLE / "vars/main.yml").read_text())


def lanes() -> dict:
    """The role's lanes table (vars/main.yml _llm_router_engine_lanes, checked by `make check-engines`)."""
    return VARS["_llm_router_engine_lanes"]


DEBIAN12 = engines_f.distro_pythons("Debian", "12.11")
JAMMY = engines_f.distro_pythons("Ubuntu", "22.04")
NOBLE = engines_f.distro_pythons("Ubuntu", "24.04")


def test_gpu_query_reads_caps_and_the_oldest_driver() -> None:
    """nvidia-smi --query-gpu=compute_cap,driver_version --format=csv,noheader prints one 'cap, driver' per GPU."""
    assert engines_f.gpu_query(["9.0, 580.95.05", "12.0, 575.51.03", ""]) == {
        "compute_caps": ["9.0", "12.0"],
        "driver": "575.51.03",
    }
    assert engines_f.gpu_query([]) == {"compute_caps": [], "driver": ""}


def test_distribution_pythons() -> None:
    """Debian 12 python3 3.11.2 (apt-cache policy python3-venv); Ubuntu 22.04 python3 3.10.6 and python3.11
    3.11.0~rc1-1~22.04 in universe (packages.ubuntu.com/jammy-updates/python3.11-venv, python3.11-dev);
    Ubuntu 24.04 python3 3.12.3 (packages.ubuntu.com/noble-updates/amd64/python3-venv)."""
    assert [(p["version"], p["path"]) for p in DEBIAN12] == [("3.11", "/usr/bin/python3")]
    assert [(p["version"], p["path"]) for p in JAMMY] == [("3.10", "/usr/bin/python3"), ("3.11", "/usr/bin/python3.11")]
    assert JAMMY[1]["packages"] == ["python3.11-venv"] and JAMMY[1]["dev"] == ["python3.11-dev"]
    assert [p["version"] for p in NOBLE] == ["3.12"]
    assert engines_f.distro_pythons("Fedora", "41") == []


def test_router_python_is_3_11_or_newer() -> None:
    """pyproject.toml requires-python >=3.11 (router_app/config.py uses StrEnum)."""
    assert engines_f.router_python(DEBIAN12)["path"] == "/usr/bin/python3"
    jammy = engines_f.router_python(JAMMY)
    assert jammy["path"] == "/usr/bin/python3.11" and jammy["packages"] == ["python3.11-venv"]
    assert engines_f.router_python(NOBLE)["version"] == "3.12"
    old = engines_f.router_python(JAMMY, {"version": "3.10", "path": "/opt/py310", "packages": [], "dev": []})
    assert old["path"] == "" and "router: needs Python >=3.11" in old["error"] and "/opt/py310" in old["error"]


def plan(engines, driver, distro, caps=("9.0",), **overrides):
    return engines_f.engine_plan(list(engines), lanes(), driver, list(caps), distro, overrides)


def test_tabbyapi_main_lane_follows_driver_and_python() -> None:
    """tabbyAPI@e632af4 pyproject.toml: cu13 pins torch 2.11.0+cu130 / exllamav3 +cu132 only for cp312+ (and
    triton/FLA `python_version >= '3.12'`); cu12 pins torch 2.9.0+cu128 / exllamav3 +cu128 for cp310-cp313.
    exl2-checkpoint @79126f9: exllamav2 0.3.2+cu128 only in cu12 (engine-audit.md #3, #4)."""
    table = lanes()
    assert "cu13" not in table["tabbyapi_exl2"]
    noble = plan(["tabbyapi", "tabbyapi_exl2"], "580.95.05", NOBLE)
    assert noble["errors"] == []
    assert noble["engines"]["tabbyapi"]["lane"] == "cu13"
    assert noble["engines"]["tabbyapi"]["requirements"] == table["tabbyapi"]["cu13"]["requirements"]
    assert noble["engines"]["tabbyapi_exl2"]["lane"] == "cu12"
    debian = plan(["tabbyapi"], "580.95.05", DEBIAN12)["engines"]["tabbyapi"]
    assert (debian["lane"], debian["python_version"]) == ("cu12", "3.11")
    r570 = plan(["tabbyapi"], table["tabbyapi"]["cu12"]["min_driver"], NOBLE)["engines"]["tabbyapi"]
    assert r570["lane"] == "cu12"


def test_jammy_engines_use_python_3_11_from_universe() -> None:
    """vllm 0.32.0 METADATA Requires-Python >=3.11,<3.15; sglang 0.5.23 Requires-Python >=3.11 (engine-audit.md #3)."""
    result = plan(["vllm", "tabbyapi"], "580.95.05", JAMMY)
    assert result["errors"] == []
    vllm = result["engines"]["vllm"]
    assert vllm["python"] == "/usr/bin/python3.11" and vllm["dev_packages"] == ["python3.11-dev"]
    assert result["engines"]["tabbyapi"]["python"] == "/usr/bin/python3"  # cu12 takes jammy's 3.10


def test_driver_too_old_names_engine_driver_needed_and_fix() -> None:
    result = plan(["vllm", "tabbyapi"], "535.230.02", DEBIAN12)
    assert result["engines"] == {}
    for engine, error in zip(["vllm", "tabbyapi"], result["errors"], strict=True):
        assert error.startswith(f"{engine}: no install lane fits this host (NVIDIA driver 535.230.02)")
        needed = min((lane["min_driver"] for lane in lanes()[engine].values()), key=engines_f._version_tuple)
        assert f"needs driver >= {needed}" in error and f"Fix: install NVIDIA driver >= {needed}" in error


def test_python_too_old_names_engine_and_python() -> None:
    result = plan(["tabbyapi"], "580.95.05", DEBIAN12, lanes={"tabbyapi": "cu13"})
    (error,) = result["errors"]
    assert "tabbyapi:" in error and "cu13 needs Python 3.12 (this host has 3.11)" in error
    assert "llm_router_engine_pythons.tabbyapi" in error
    override = {"tabbyapi": {"version": "3.12", "path": "/opt/py312/bin/python3.12", "packages": [], "dev": []}}
    ok = plan(["tabbyapi"], "580.95.05", DEBIAN12, lanes={"tabbyapi": "cu13"}, pythons=override)
    assert ok["engines"]["tabbyapi"]["python"] == "/opt/py312/bin/python3.12"


def test_engine_without_lanes_is_refused() -> None:
    """The old role ended in a template KeyError for a CUDA major missing from its vLLM table (engine-audit #17)."""
    result = engines_f.engine_plan(["vllm"], {"sglang": lanes()["sglang"]}, "580.95.05", ["9.0"], DEBIAN12, {})
    assert result["errors"] == ["vllm: no install lanes for this engine in the role's lanes table."]


def test_unknown_lane_and_blackwell_kernels() -> None:
    (error,) = plan(["vllm"], "580.95.05", DEBIAN12, lanes={"vllm": "cu14"})["errors"]
    assert "vllm: lane 'cu14' (llm_router_engine_lanes.vllm) is not in the lanes table" in error
    (error,) = plan(["vllm"], "580.95.05", DEBIAN12, lanes={"vlm": "cu12"})["errors"]
    assert error.startswith("llm_router_engine_lanes: unknown engine(s) vlm; known: sglang, vllm")
    table = {"x": {"cu13": {"cuda_major": 13, "min_driver": "580", "pythons": [">=3.10"], "archs": ["9.0"]}}}
    result = engines_f.engine_plan(["x"], table, "580.95.05", ["9.0", "12.0"], DEBIAN12, {})
    assert "cu13 has no kernels for compute capability 12.0" in result["errors"][0]


def test_python_specifiers() -> None:
    assert engines_f._python_ok("3.11", ">=3.11,<3.15") and not engines_f._python_ok("3.10", ">=3.11,<3.15")
    assert not engines_f._python_ok("3.15", ">=3.11,<3.15") and engines_f._python_ok("3.12", ["3.12", "3.13"])


def test_venv_specs_and_idempotent_markers() -> None:
    """vllm 0.32.0 vllm/entrypoints/cli/download_kernels.py: `vllm download-kernels` installs the precompiled kernels
    it would otherwise download or compile at first start (engine-audit.md #11)."""
    paths = {
        **PATHS,
        "sglang_venv": "/opt/llm-router/engines/sglang/venv",
        "vllm_venv": "/opt/llm-router/engines/vllm/venv",
    }
    engines = plan(["vllm", "tabbyapi"], "580.95.05", DEBIAN12)["engines"]
    specs = engines_f.venv_specs(engines, paths, {"tabbyapi": "e632af41eba68abeadc3437c62674360f2f8cbf1"})
    tabby, vllm = specs
    ((sh, flag, script, vllm_bin),) = vllm["post_install"]
    assert (sh, flag, vllm_bin) == ("/bin/sh", "-c", "/opt/llm-router/engines/vllm/venv/bin/vllm")
    # vllm 0.19.1 (cu12 lane) has no download-kernels: run it only where the subcommand exists.
    assert script == 'if "$0" download-kernels --help >/dev/null 2>&1; then exec "$0" download-kernels; fi'
    assert tabby["venv"] == PATHS["tabbyapi_dir"] + "/venv" and tabby["post_install"] == []
    lane = {"cu13": {**lanes()["vllm"]["cu13"], "post_install": [["{venv}/bin/vllm", "download-kernels"]]}}
    (own,) = engines_f.venv_specs(
        engines_f.engine_plan(["vllm"], {"vllm": lane}, "580.95.05", [], DEBIAN12)["engines"], paths
    )
    assert own["post_install"] == [["/opt/llm-router/engines/vllm/venv/bin/vllm", "download-kernels"]]
    assert tabby["post_install"] == []
    again = engines_f.venv_specs(engines, paths, {"tabbyapi": "e632af41eba68abeadc3437c62674360f2f8cbf1"})
    assert [s["id"] for s in again] == [s["id"] for s in specs]
    moved = engines_f.venv_specs(engines, paths, {"tabbyapi": "0" * 40})
    assert moved[0]["id"] != tabby["id"] and moved[1]["id"] == vllm["id"]

    def marker(spec, text):
        return {"item": spec, "content": base64.b64encode(text.encode()).decode()}

    markers = [marker(tabby, tabby["id"] + "\n"), {"item": vllm, "failed": True, "msg": "file not found"}]
    assert [s["engine"] for s in engines_f.stale_venvs(specs, markers)] == ["vllm"]
    assert engines_f.stale_venvs(specs, [marker(tabby, tabby["id"]), marker(vllm, vllm["id"])]) == []


def test_probed_pythons() -> None:
    results = [
        {"item": {"key": "router", "value": "/usr/bin/python3.11"}, "rc": 0, "stdout": "3.11"},
        {"item": {"key": "vllm", "value": "/nope"}, "rc": 2, "stdout": "", "msg": "No such file"},
    ]
    probed = engines_f.probed_pythons(results)
    assert probed["router"]["version"] == "3.11" and probed["router"]["error"] == ""
    assert probed["vllm"]["error"] == "llm_router_engine_pythons.vllm: /nope does not run (No such file)."


def test_gpu_smoke_inventory_is_valid() -> None:
    """scripts/gpu_smoke.py's models pass the role's filter and sleep only where the engine can."""
    smoke = load_script("gpu_smoke")
    entries = [s.entry for s in smoke.smoke_models(Path("/srv/llm-models/smoke"))]
    models = normalize(entries)
    assert [m["backend"] for m in models] == ["llamacpp", "sglang", "vllm", "tabbyapi", "tabbyapi"]
    sleeping = {m["id"] for m in models if m["evict"] == "sleep"}
    assert sleeping == {"smoke-sglang", "smoke-vllm", "smoke-tabbyapi", "smoke-tabbyapi-exl2"}
    assert models[4]["workdir"] == PATHS["tabbyapi_exl2_dir"]
    assert models[0]["source"].endswith(".gguf") and models[0]["model"].endswith(".gguf")


def test_router_config_carries_placement_and_lifecycle_keys() -> None:
    models = normalize(
        [
            {"id": "q", "backend": "sglang", "model": "/srv/q", "gpus": "0,1", "memory": "40GiB", "pinned": True},
            {"id": "l", "backend": "llamacpp", "model": "/srv/l.gguf", "context_length": 8192, "ttl_s": 600},
        ]
    )
    config = config_f.router_config(models, {"state_dir": "/var/lib/llm-router/router"}, "/etc/llm-router")
    parse_config({**config, "router": {**config["router"], "supervisor": "systemd"}})  # the router accepts it
    q, llama = config["models"]
    assert q["devices"] == ["0", "1"] and q["memory"] == "40GiB" and q["pinned"] is True
    assert q["weights"] == "/srv/q" and "ttl_s" not in q
    assert llama["context_length"] == 8192 and llama["ttl_s"] == 600
    assert llama["weights"] == "/srv/l.gguf" and "devices" not in llama


ENGINE_IDS = {"llamacpp": "b11312 0a1b", "sglang": "s1", "vllm": "v1", "tabbyapi": "t1", "tabbyapi_exl2": "x1"}


def revisions(models: list[dict], engine_ids: dict | None = None) -> dict[str, str]:
    config = config_f.router_config(
        normalize(models), {}, "/etc/llm-router", ENGINE_IDS if engine_ids is None else engine_ids
    )
    return {m["id"]: m.get("revision") for m in config["models"]}


def test_revision_changes_with_what_shapes_the_engine_and_only_for_that_model() -> None:
    fleet = [
        {"id": "a", "backend": "llamacpp", "model": "/srv/a.gguf", "context_length": 1024},
        {"id": "b", "backend": "llamacpp", "model": "/srv/b.gguf", "port": 8201},
        {"id": "v", "backend": "vllm", "model": "/srv/v", "port": 8202},
        {"id": "t", "backend": "tabbyapi", "model": "/srv/t-exl3", "port": 8203},
        {"id": "x", "backend": "tabbyapi", "model": "/srv/x-exl2", "format": "exl2", "port": 8204},
        {"id": "r", "backend": "openai", "url": "https://api.example.com/v1"},
    ]
    base = revisions(fleet)
    assert all(re.fullmatch(r"[0-9a-f]{16}", base[m]) for m in "abvtx") and base["r"] is None
    assert revisions(fleet) == base, "stable for the same inputs"
    # Router-only keys (not the engine's) leave every revision alone.
    assert revisions([{**fleet[0], "ttl_s": 60, "description": "d"}, *fleet[1:]]) == base

    def changed(models: list[dict], engine_ids: dict | None = None) -> set[str]:
        new = revisions(models, engine_ids)
        return {m for m in base if new[m] != base[m]}

    assert changed([{**fleet[0], "context_length": 2048}, *fleet[1:]]) == {"a"}  # argv
    assert changed([{**fleet[0], "extra_args": ["--jinja"]}, *fleet[1:]]) == {"a"}
    assert changed([fleet[0], {**fleet[1], "env": {"X": "1"}}, *fleet[2:]]) == {"b"}  # env
    assert changed([*fleet[:2], {**fleet[2], "gpus": "1"}, *fleet[3:]]) == {"v"}  # env CUDA_VISIBLE_DEVICES
    assert changed([*fleet[:3], {**fleet[3], "cache_size": 8192}, *fleet[4:]]) == {"t"}  # TabbyAPI config only
    assert changed(fleet, {**ENGINE_IDS, "llamacpp": "b11312 ffff"}) == {"a", "b"}  # llama.cpp rebuild
    assert changed(fleet, {**ENGINE_IDS, "vllm": "v2"}) == {"v"}  # engine upgrade
    assert changed(fleet, {**ENGINE_IDS, "tabbyapi_exl2": "x2"}) == {"x"}  # EXL2 checkout only
    config = config_f.router_config(normalize(fleet), {"supervisor": "systemd"}, "/etc/llm-router", ENGINE_IDS)
    parse_config(config)  # the router accepts `revision`
    assert "revision" not in config_f.router_config(normalize(fleet), {}, "/etc/llm-router")["models"][0]


schema = load_filter("llm_router_schema")


def test_argument_specs_describe_every_model_key() -> None:
    """meta/argument_specs.yml mirrors defaults/main.yml, and the filter's schema down to each model key."""
    specs = yaml.safe_load((ROOT / "roles/llm_router/meta/argument_specs.yml").read_text())
    top = specs["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROOT / "roles/llm_router/defaults/main.yml").read_text())
    assert set(top) == set(defaults) and all(top[k].get("default") == v for k, v in defaults.items())
    options = top["llm_router_models"]["options"]
    assert set(options) == set(schema.MODEL_KEYS)
    assert all("type" in o and o.get("description") for o in options.values())
    assert options["backend"]["choices"] == list(schema.BACKENDS) and schema.BACKENDS == models_f.BACKENDS
    assert options["evict"]["choices"] == ["stop", "sleep"]
    # Every key the normalize/config filters read is in the schema.
    assert set(config_f.ROUTER_MODEL_KEYS) <= set(schema.MODEL_KEYS)


def errors(models, acc="cuda", count=2, known=True):
    return schema.model_errors(models, acc, count, known)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "contxt_length": 8192},
            "model 'm': unknown key 'contxt_length' (did you mean 'context_length'?)",
        ),
        ({"id": "m", "backend": "vllm", "model": "/srv/m", "gpu": "0"}, "model 'm': unknown key 'gpu'"),
        (
            {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "evict": "sleep"},
            "model 'm': evict 'sleep' on backend llamacpp: llama.cpp has no sleep endpoint. Fix: evict: stop",
        ),
        (
            {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "tensor_parallel": 2},
            "model 'm': 'tensor_parallel' has no effect on backend llamacpp (only sglang, vllm, tabbyapi). Fix: remove",
        ),
        (
            {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "load_mode": "direct"},
            "model 'm': load_mode 'direct'; llama-server takes auto, none, mmap, mlock, mmap+mlock, dio.",
        ),
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "load_mode": "dio"},
            "model 'm': 'load_mode' has no effect on backend vllm (only llamacpp)",
        ),
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "gpu_split": [1, 1]},
            "model 'm': 'gpu_split' has no effect on backend vllm",
        ),
        (
            {"id": "m", "backend": "sglang", "model": "/srv/m", "cache_mode": "Q8"},
            "model 'm': 'cache_mode' has no effect on backend sglang (only tabbyapi)",
        ),
        (
            {"id": "m", "backend": "tabbyapi", "model": "/srv/m", "quantization": "awq"},
            "model 'm': 'quantization' has no effect on backend tabbyapi",
        ),
        (
            {"id": "m", "backend": "openai", "url": "https://x/v1", "port": 9000},
            "model 'm': 'port' has no effect on backend openai",
        ),
        (
            {"id": "m", "backend": "tabbyapi", "model": "/srv/m", "format": "gguf"},
            "model 'm': format 'gguf' cannot be served by tabbyapi",
        ),
        (
            {"id": "m", "backend": "sglang", "model": "/srv/m", "gpus": "0,1", "tensor_parallel": 4},
            "model 'm': tensor_parallel 4 needs 4 GPUs but gpus '0,1' has 2. Fix:",
        ),
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "gpus": "0,1", "tensor_parallel": 1},
            "model 'm': tensor_parallel 1 uses 1 GPU(s) but gpus '0,1' reserves 2. Fix: set tensor_parallel: 2",
        ),
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "tensor_parallel": 4},
            "model 'm': tensor_parallel 4 needs 4 GPUs but this host has 2",
        ),
        (
            {"id": "m", "backend": "vllm", "model": "/srv/m", "gpus": "0,2"},
            "model 'm': gpus '0,2' names GPU 2, but this host has 2 GPU(s) (indices 0..1",
        ),
        ({"id": "m", "backend": "vllm", "model": "/srv/m", "gpus": "0,0"}, "lists a GPU twice"),
        ({"id": "m", "backend": "vllm", "model": "/srv/m", "gpus": "a"}, "a is not a GPU index"),
        (
            {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "gpus": "0", "gpu_split": [1, 1]},
            "model 'm': gpu_split has 2 entries but the model sees 1 GPU(s)",
        ),
        (
            {"id": "m", "backend": "llamacpp", "model": "/home/me/m.gguf"},
            "model 'm': weights /home/me/m.gguf are under /home (ProtectHome=yes in llm-model@.service)",
        ),
        ({"id": "m", "backend": "tabbyapi", "model": "/tmp/m"}, "are under /tmp (PrivateTmp=yes"),
        ({"id": "m", "backend": "llamacpp", "model": "m.gguf"}, "model 'm.gguf' must be an absolute path"),
        ({"id": "m", "backend": "vllm", "model": "not a name"}, "neither an absolute path nor a Hugging Face name"),
        (
            {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "checksum": "sha256:00"},
            "'checksum' verifies a download: it needs a URL in 'source'",
        ),
        ({"backend": "vllm", "model": "/srv/m"}, "llm_router_models[0]: 'id' is required"),
        ({"id": "m", "backend": "ollama"}, "model 'm': backend 'ollama'; set 'backend' to one of"),
        # TabbyAPI's cache keys (tabbyAPI@e632af4 common/config_models.py:194-211; 79126f9 exllamav2/model.py:186-193).
        ({"id": "m", "backend": "tabbyapi", "model": "/srv/m", "cache_mode": "Q5"}, "cache_mode 'Q5'; TabbyAPI takes"),
        (
            {"id": "m", "backend": "tabbyapi", "model": "/srv/m", "format": "exl2", "cache_mode": "8,6"},
            "cache_mode '8,6' is EXL3-only; exllamav2 would use FP16",
        ),
        (
            {"id": "m", "backend": "tabbyapi", "model": "/srv/m", "cache_size": 1000},
            "cache_size 1000 must be a positive multiple of 256",
        ),
        (
            {"id": "m", "backend": "tabbyapi", "model": "/srv/m", "cache_size": 8192, "context_length": 16384},
            "context_length 16384 exceeds cache_size 8192; TabbyAPI would cut it to 8192",
        ),
    ],
)
def test_model_errors_name_the_model_the_key_and_the_fix(model, message) -> None:
    found = errors([model])
    assert any(message in e for e in found), found


def test_model_errors_on_cpu_hosts_and_without_a_gpu_count() -> None:
    gpu_keys = {"id": "m", "backend": "llamacpp", "model": "/srv/m.gguf", "gpus": "0", "gpu_layers": 99}
    found = errors([gpu_keys], acc="cpu")
    assert found == [
        "model 'm': 'gpus' on a CPU host (llm_router_accelerator: cpu) has no GPU to use. Fix: remove it.",
        "model 'm': 'gpu_layers' on a CPU host (llm_router_accelerator: cpu) has no GPU to use. Fix: remove it.",
    ]
    # nvidia-smi not read yet (the playbook's early check): indices are not compared with a count.
    assert errors([{"id": "m", "backend": "vllm", "model": "/srv/m", "gpus": "7"}], count=0, known=False) == []


def test_valid_models_pass_and_gpus_may_be_a_list() -> None:
    models = [
        {"id": "q", "backend": "sglang", "model": "Qwen/Qwen2.5-7B-Instruct", "gpus": [0, 1], "tensor_parallel": 2},
        {
            "id": "v",
            "backend": "vllm",
            "model": "/srv/v",
            "gpus": "0,1",
            "tensor_parallel": 1,
            "extra_args": ["--pipeline-parallel-size", "2"],
        },
        {"id": "u", "backend": "vllm", "model": "/srv/u", "gpus": "GPU-5f1c0c5e-aaaa"},
        {
            "id": "t",
            "backend": "tabbyapi",
            "model": "/srv/t-exl2",
            "format": "EXL2",
            "gpu_split": [20, 24],
            "cache_mode": "Q8",
        },
        {
            "id": "g",
            "backend": "llamacpp",
            "model": "/srv/g.gguf",
            "source": "https://x/g.gguf",
            "checksum": "sha256:0",
        },
        {"id": "r", "backend": "openai", "url": "https://x/v1", "api_key_file": "/etc/k", "aliases": ["remote"]},
    ]
    assert errors(models) == []
    assert normalize(models[:1])[0]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert schema.local_weights(models) == [
        {"id": "v", "path": "/srv/v"},
        {"id": "u", "path": "/srv/u"},
        {"id": "t", "path": "/srv/t-exl2"},
    ]
    assert [w["id"] for w in schema.local_weights(models, fetched=True)] == ["v", "u", "t", "g"]


def test_weights_and_access_errors_from_task_results() -> None:
    stats = [
        {"item": {"id": "a", "path": "/srv/a"}, "stat": {"exists": True}},
        {"item": {"id": "b", "path": "/srv/b"}, "stat": {"exists": False}},
        {"item": {"id": "c", "path": "/srv/c"}, "skipped": True},
    ]
    assert schema.weights_errors(stats) == [
        "model 'b': weights /srv/b not found on this host. Fix: copy them there (see docs/provisioning.md "
        "'Where weights live'), set 'source' to fetch a single file, or correct 'model'."
    ]
    access = [{"item": {"id": "a", "path": "/srv/a"}, "rc": 1}, {"item": {"id": "b", "path": "/srv/b"}, "rc": 0}]
    (message,) = schema.access_errors(access, "llm-engine")
    assert message.startswith("model 'a': weights /srv/a are not readable by the engine user llm-engine")


def _molecule_hosts() -> dict[str, dict]:
    text = (ROOT / "molecule/default/molecule.yml").read_text()
    text = text.replace("${MOLECULE_MODELS_DIR}", "/tmp/models").replace("${LLAMACPP_ARCHIVE}", "/tmp/a.tar.gz")
    return yaml.safe_load(text)["provisioner"]["inventory"]["host_vars"]


def test_shipped_inventories_pass_the_schema() -> None:
    """Molecule's hosts, the example inventory and the GPU smoke models pass the model checks."""
    for host in _molecule_hosts().values():
        caps = host.get("llm_router_gpu_compute_capabilities", [])
        assert schema.model_errors(host["llm_router_models"], host["llm_router_accelerator"], len(caps), True) == []
    example = yaml.safe_load((ROOT / "inventories/example/group_vars/llm_router.yml").read_text())
    for key in ("llm_router_models_hopper", "llm_router_models_blackwell"):
        assert schema.model_errors(example[key], "cuda", 2, True) == [], key
    smoke = load_script("gpu_smoke")
    entries = [s.entry for s in smoke.smoke_models(Path("/srv/llm-models/smoke"))]
    assert schema.model_errors(entries, "cuda", 1, True) == []


def test_tasks_that_handle_secrets_have_no_log() -> None:
    """Generated keys, slurped key files and files rendered with a key never show in output or --diff."""
    secret = re.compile(r"ansible\.builtin\.password|api-keys|admin\.key|api_tokens|openwebui\.env|_key\b")
    found = []
    for path in sorted((ROOT / "roles/llm_router/tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            module = next((k for k in task if k.startswith("ansible.builtin.")), "")
            if module not in ("ansible.builtin.copy", "ansible.builtin.slurp", "ansible.builtin.template"):
                continue
            if secret.search(json.dumps(task[module])) and task.get("no_log") is not True:
                found.append(f"{path.name}: {task['name']}")
    assert found == []


# --- Open-WebUI: its own user, a client key only, its own listen address ---------------------------------------

OPENWEBUI_VARS = {
    "llm_router_openwebui_user": "open-webui",
    "llm_router_openwebui_listen_host": "127.0.0.1",
    "llm_router_openwebui_port": 8080,
    "llm_router_openwebui_data_dir": "/var/lib/open-webui",
    "llm_router_listen_host": "0.0.0.0",
    "llm_router_listen_port": 8002,
    "llm_router_config_dir": "/etc/llm-router",
    "llm_router_base_dir": "/opt/llm-router",
    "llm_router_user": "llm-router",
}


def test_openwebui_unit_runs_as_its_own_user_on_its_own_address() -> None:
    lines = render("open-webui.service.j2", **OPENWEBUI_VARS).splitlines()
    assert "User=open-webui" in lines and "Group=open-webui" in lines
    assert not [line for line in lines if line.startswith("SupplementaryGroups")]
    assert "StateDirectory=open-webui" in lines and "WorkingDirectory=/var/lib/open-webui" in lines
    assert any(line.endswith("open-webui serve --host 127.0.0.1 --port 8080") for line in lines)
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "CapabilityBoundingSet="):
        assert option in lines
    elsewhere = render("open-webui.service.j2", **OPENWEBUI_VARS | {"llm_router_openwebui_data_dir": "/srv/owui"})
    assert "ReadWritePaths=/srv/owui" in elsewhere and "StateDirectory" not in elsewhere


def test_openwebui_env_holds_a_client_key_and_the_llamacpp_provider() -> None:
    env = render("openwebui.env.j2", _llm_router_openwebui_client_key="sk-client", **OPENWEBUI_VARS).splitlines()
    assert [line for line in env if "KEY" in line and not line.startswith("#")] == ["OPENAI_API_KEYS=sk-client"]
    assert 'OPENAI_API_CONFIGS={"0": {"provider": "llama.cpp"}}' in env
    assert "OPENAI_API_BASE_URLS=http://127.0.0.1:8002/v1" in env
    assert "DATA_DIR=/var/lib/open-webui" in env and "STATIC_DIR=/var/lib/open-webui/static" in env
    on_lan = render(
        "openwebui.env.j2",
        _llm_router_openwebui_client_key="k",
        **OPENWEBUI_VARS | {"llm_router_listen_host": "10.0.0.5"},
    )
    assert "OPENAI_API_BASE_URLS=http://10.0.0.5:8002/v1" in on_lan.splitlines()
    tasks = {t["name"]: t for t in yaml.safe_load((ROLE / "tasks/openwebui.yml").read_text())}
    env_task = next(t for name, t in tasks.items() if name.startswith("Render the Open-WebUI environment"))
    assert env_task["ansible.builtin.template"] | {"src": None, "dest": None} == {
        "src": None,
        "dest": None,
        "owner": "root",
        "group": "root",
        "mode": "0600",
    }
    assert env_task["no_log"] is True


# --- Engine keys: one per model, from a systemd credential, never in argv --------------------------------------

# A stand-in engine: prints what it got (argv, VLLM_API_KEY, the --config YAML), as JSON.
STUB_ENGINE = """#!/usr/bin/env python3
import json, os, sys
argv = sys.argv[1:]
config = argv[argv.index("--config") + 1] if "--config" in argv else None
print(json.dumps({"argv": argv, "vllm_api_key": os.environ.get("VLLM_API_KEY"),
                  "config": open(config).read() if config else None,
                  "config_mode": oct(os.stat(config).st_mode & 0o777) if config else None}))
"""


def test_engine_keys_reach_each_engine_from_its_credential_and_not_through_argv(tmp_path: Path) -> None:
    """The start scripts hand the unit's credential ($CREDENTIALS_DIRECTORY/engine.key, LoadCredential= in
    llm-model@.service) to each engine the way its source reads keys, never as an argument (argv is public in
    ps): llama-server `--api-key-file FILE` (b11312 common/arg.cpp:3502-3517, one key per line); vLLM env
    VLLM_API_KEY (0.32.0 envs.py:820, serve/middleware/register.py:32-36; 0.19.1 envs.py:649,
    entrypoints/openai/api_server.py:265-269) plus `--middleware llm_router_engine_auth.RequireKey` on PYTHONPATH;
    SGLang `--config X.yaml` with `api-key` (0.5.23 srt/server_args.py:683-689 and
    srt/utils/server_args_config_parser.py: YAML keys are flag names, the suffix must be .yaml/.yml; 0.5.10.post1
    srt/server_args.py:6530-6536, srt/server_args_config_parser.py). The router's config names the same file."""
    stub = tmp_path / "engine"
    stub.write_text(STUB_ENGINE)
    stub.chmod(0o755)
    paths = {**PATHS, "base_dir": str(tmp_path), "llama_server": str(stub), "sglang_python": str(stub)}
    paths["vllm_bin"] = str(stub)
    models = models_f.normalize_models(
        [
            {"id": "l", "backend": "llamacpp", "model": "/m/l.gguf"},
            {"id": "v", "backend": "vllm", "model": "/m/v", "evict": "sleep", "env": {"PYTHONPATH": "/x"}},
            {"id": "s", "backend": "sglang", "model": "/m/s"},
            {"id": "t", "backend": "tabbyapi", "model": "/m/t-exl3"},
            {"id": "r", "backend": "openai", "url": "https://example.invalid/v1", "api_key_file": "/etc/r.key"},
        ],
        8100,
        paths,
        ["90"],
        "cuda",
    )
    llama, vllm, sglang, tabby, _ = models
    for model in (llama, vllm, sglang):
        assert model["api_key_file"] == f"/etc/llm-router/engine-keys/{model['slug']}.key"
    assert "api_key_file" not in tabby  # TabbyAPI keeps its api_tokens.yml
    assert vllm["env"]["PYTHONPATH"] == f"{tmp_path}/lib/python:/x"
    assert vllm["argv"][-2:] == ["--middleware", "llm_router_engine_auth.RequireKey"]

    config = config_f.router_config(models, {"supervisor": "systemd"}, "/etc/llm-router", ENGINE_IDS)
    parse_config(config)
    keys = {m["id"]: m.get("api_key_file") for m in config["models"]}
    assert keys == {
        "l": "/etc/llm-router/engine-keys/l.key",
        "v": "/etc/llm-router/engine-keys/v.key",
        "s": "/etc/llm-router/engine-keys/s.key",
        "t": None,
        "r": "/etc/r.key",
    }

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "engine.key").write_text("sk-engine-abc123\n")
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(credentials), "TMPDIR": str(tmp_path)}

    def run(model: dict) -> dict:
        script = tmp_path / f"{model['slug']}.sh"
        script.write_text(render("model-start.sh.j2", item=model))
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
        return json.loads(result.stdout)

    got = run(llama)
    assert got["argv"][-2:] == ["--api-key-file", f"{credentials}/engine.key"]
    got = run(vllm)
    assert got["vllm_api_key"] == "sk-engine-abc123" and "--api-key" not in got["argv"]
    got = run(sglang)
    assert got["argv"][-2] == "--config" and got["argv"][-1].endswith(".yaml")
    assert yaml.safe_load(got["config"]) == {"api-key": "sk-engine-abc123"} and got["config_mode"] == "0o600"
    for model in (llama, vllm, sglang):
        assert "sk-engine-abc123" not in json.dumps(run(model)["argv"])
        assert "sk-engine" not in render("model-start.sh.j2", item=model) + render("model.env.j2", item=model)

    missing = subprocess.run(
        ["bash", "-c", render("model-start.sh.j2", item=llama)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0 and "LoadCredential=engine.key" in missing.stderr

    assert "LoadCredential=engine.key:/etc/llm-router/engine-keys/%i.key" in model_unit()
    assert "PrivateTmp=yes" in model_unit()  # the SGLang YAML stays in the unit's own /tmp


def test_engine_key_paths_keep_revisions_stable_and_the_middleware_module_loads(monkeypatch) -> None:
    """The revision covers the key's path, not its content: the same on every run. The middleware module that
    vLLM imports (files/llm_router_engine_auth.py) refuses to start without a key rather than leave vLLM open."""
    fleet = [{"id": "a", "backend": "llamacpp", "model": "/srv/a.gguf"}, {"id": "v", "backend": "vllm", "model": "/v"}]
    assert revisions(fleet) == revisions(fleet)
    auth = load_module(ROLE / "files/llm_router_engine_auth.py", "auth")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="VLLM_API_KEY is empty"):
        auth.RequireKey(lambda *a: None)
