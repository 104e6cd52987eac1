"""Every TabbyAPI config.yml the role renders, judged against TabbyAPI's config model at the commit that reads it.

TabbyAPI's own loader ignores unknown keys (pydantic extra='ignore'), so a misspelt key would load without effect;
tests/engine_code/tabbyapi_config_model.py describes both pinned commits and reports those too. Models are built
through the role's normalize_models; which checkout (and so which commit) serves a model is the workdir its
_engine_command picks. The template is rendered twice: with tests/role_render.py's stand-in filters and with
Ansible's own filter functions (ansible.plugins.filter.core; os.path.basename gives '' for a path ending in '/',
pathlib's .name does not), and the two must load to the same mapping. Loading is TabbyAPI's: ruamel.yaml with
typ ["rt", "safe"] (common/tabby_config.py:16).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule
from ruamel.yaml import YAML

from tests.engine_code import tabbyapi_config_model as tabby
from tests.role_render import PATHS, ROLE, normalize, render

TEMPLATE = "tabbyapi-config.yml.j2"
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
# The checkout a model runs from -> the commit pinned for it (roles/llm_router/defaults/main.yml).
CHECKOUT_COMMIT = {
    PATHS["tabbyapi_dir"]: DEFAULTS["llm_router_tabbyapi_version"],
    PATHS["tabbyapi_exl2_dir"]: DEFAULTS["llm_router_tabbyapi_exl2_version"],
}
# The backend TabbyAPI picks for the role's formats (common/model.py:63-71@79126f9; main has exllamav3 only).
BACKEND = {"exl3": "exllamav3", "exl2": "exllamav2"}

SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "context_length": {"context_length": 16384},
    "cache_size": {"context_length": 16384, "cache_size": 32768},
    "cache_size-alone": {"cache_size": 8192},
    "tensor_parallel": {"gpus": "0,1", "tensor_parallel": 2},
    "tensor_parallel-1": {"gpus": "0", "tensor_parallel": 1},
    "gpu_split": {"gpus": [0, 1], "gpu_split": [20, 24.5]},
    "tensor_parallel-gpu_split": {"gpus": "0,1", "tensor_parallel": 2, "gpu_split": [40, 40]},
    "cache_mode-Q8": {"cache_mode": "Q8"},
    "cache_mode-pair": {"cache_mode": "8,6"},
    "trailing-slash": {"model": "/srv/models/{name}/"},
    # Folder names YAML would read as a number, a boolean or null, or cut at " #", unless the template quotes them.
    "yaml-number": {"model": "/srv/models/2024"},
    "yaml-null": {"model": "/srv/models/null"},
    "yaml-comment": {"model": "/srv/models/x #1"},
    "everything": {
        "context_length": 32768,
        "cache_size": 65536,
        "gpus": [0, 1],
        "tensor_parallel": 2,
        "gpu_split": [22.5, 24],
        "cache_mode": "4,4",
        "model": "/srv/models/{name}/",
    },
    "everything-Q6": {
        "context_length": 8192,
        "cache_size": 16384,
        "gpus": "0,1",
        "tensor_parallel": 2,
        "gpu_split": [10, 12],
        "cache_mode": "Q6",
    },
}
# exllamav2 takes no k,v bits pair (see test_exl2_cache_mode_pair_is_reported).
CASES = [
    pytest.param(fmt, shape, id=f"{fmt}-{shape}")
    for fmt in BACKEND
    for shape in SHAPES
    if not (fmt == "exl2" and "," in SHAPES[shape].get("cache_mode", ""))
]


def model_item(fmt: str, **options: Any) -> dict[str, Any]:
    """One TabbyAPI model as normalize_models hands it to the template."""
    name = f"Qwen3-8B-{fmt}"
    entry = {"id": name, "backend": "tabbyapi", "format": fmt, "model": f"/srv/models/{name}", **options}
    entry["model"] = entry["model"].format(name=name)
    return normalize([entry])[0]


def with_ansible_filters(item: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True, keep_trailing_newline=True
    )
    env.filters.update(FilterModule().filters())
    return env.get_template(TEMPLATE).render(ansible_managed="managed", item=item)


def load(text: str) -> Any:
    return YAML(typ=["rt", "safe"]).load(text)


def rendered(item: dict[str, Any]) -> Any:
    return load(with_ansible_filters(item))


def commit_of(item: dict[str, Any]) -> str:
    return CHECKOUT_COMMIT[item["workdir"]]


def test_the_pinned_commits_are_the_described_ones() -> None:
    assert DEFAULTS["llm_router_tabbyapi_version"] == tabby.MAIN, "describe the new commit in tabbyapi_config_model"
    assert DEFAULTS["llm_router_tabbyapi_exl2_version"] == tabby.EXL2, (
        "describe the new commit in tabbyapi_config_model"
    )
    assert commit_of(model_item("exl3")) == tabby.MAIN
    assert commit_of(model_item("exl2")) == tabby.EXL2


@pytest.mark.parametrize(("fmt", "shape"), CASES)
def test_role_config_is_valid_for_its_tabbyapi(fmt: str, shape: str) -> None:
    item = model_item(fmt, **SHAPES[shape])
    config = rendered(item)

    assert tabby.check(config, commit_of(item), BACKEND[fmt]) == []

    network, model = config["network"], config["model"]
    assert network == {"host": "127.0.0.1", "port": item["port"], "disable_auth": False, "api_servers": ["OAI"]}
    assert config["logging"] == {"log_prompt": False, "log_requests": False}
    assert model["model_name"], "TabbyAPI loads no model at start without model_name"
    assert isinstance(model["model_name"], str) and isinstance(model["model_dir"], str)
    assert f"{model['model_dir']}/{model['model_name']}" == item["model"]
    assert item["model"] == SHAPES[shape].get("model", "/srv/models/{name}").format(name=f"Qwen3-8B-{fmt}").rstrip("/")
    assert model["inline_model_loading"] is False
    assert model.get("max_seq_len") == item.get("context_length")
    assert model.get("cache_size") == item.get("cache_size")
    assert model.get("cache_mode") == item.get("cache_mode")
    assert model.get("tensor_parallel") is (True if item.get("tensor_parallel", 1) > 1 else None)
    if "gpu_split" in item:
        assert model["gpu_split_auto"] is False
        assert model["gpu_split"] == [float(gb) for gb in item["gpu_split"]]
    else:
        assert model["gpu_split_auto"] is True
        assert "gpu_split" not in model
    assert set(config) == {"network", "logging", "model"}
    assert load(render(TEMPLATE, item=item)) == config, "role_render's stand-in filters render another config"


def test_exl2_cache_mode_pair_is_reported() -> None:
    """The role renders a k,v pair for an EXL2 model as given; the exllamav2 backend then falls back to FP16."""
    item = model_item("exl2", cache_mode="8,6")
    errors = tabby.check(rendered(item), commit_of(item), BACKEND["exl2"])
    assert len(errors) == 1 and errors[0].startswith("model.cache_mode: '8,6' is a k,v bits pair"), errors


@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    """A valid config as plain data, to break one thing at a time."""
    return json.loads(json.dumps(rendered(model_item("exl3"))))


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """base with "section.key" (or a whole "section") set to each value."""
    config = copy.deepcopy(base)
    for where, value in changes.items():
        section, _, key = where.partition(".")
        if key:
            config.setdefault(section, {})[key] = value
        else:
            config[section] = value
    return config


# changes, the commit judging, the start of the one error expected
BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    "misspelt-key": ({"model.max_seq_length": 4096}, tabby.MAIN, "model.max_seq_length: unknown key"),
    "unknown-section": ({"netwrok": {"port": 8100}}, tabby.MAIN, "netwrok: unknown section"),
    "section-not-mapping": ({"model": ["model_dir"]}, tabby.MAIN, "model: ['model_dir'] is rejected"),
    "int-as-text": ({"model.max_seq_len": "long"}, tabby.MAIN, "model.max_seq_len: 'long' is rejected"),
    "int-below-range": ({"model.max_seq_len": -2}, tabby.EXL2, "model.max_seq_len: -2 is rejected"),
    "bool-as-text": ({"model.tensor_parallel": "maybe"}, tabby.MAIN, "model.tensor_parallel: 'maybe' is rejected"),
    "split-not-list": ({"model.gpu_split": 20}, tabby.EXL2, "model.gpu_split: 20 is rejected"),
    "split-not-numbers": ({"model.gpu_split": ["20GB"]}, tabby.MAIN, "model.gpu_split: ['20GB'] is rejected"),
    "name-is-number": ({"model.model_name": 2024}, tabby.MAIN, "model.model_name: 2024 is rejected"),
    "name-null": ({"model.model_name": None}, tabby.MAIN, "model.model_name: null"),
    "cache_size-not-256": ({"model.cache_size": 1000}, tabby.EXL2, "model.cache_size: 1000 is rejected"),
    "cache_mode-Q5": ({"model.cache_mode": "Q5"}, tabby.MAIN, "model.cache_mode: 'Q5' is rejected"),
    "cache_mode-9,9": ({"model.cache_mode": "9,9"}, tabby.EXL2, "model.cache_mode: '9,9' is rejected"),
    "cache_mode-int": ({"model.cache_mode": 8}, tabby.MAIN, "model.cache_mode: 8 is rejected"),
    "api_servers": ({"network.api_servers": ["OAI", "vllm"]}, tabby.MAIN, "network.api_servers: ['OAI', 'vllm'] is"),
    "main-key-on-exl2": ({"network.sse_ping_interval": 15}, tabby.EXL2, "network.sse_ping_interval: unknown key"),
    "exl2-key-on-main": ({"model.reasoning_suppress_header": "x"}, tabby.MAIN, "model.reasoning_suppress_header: un"),
    "legacy-logging": ({"logging.prompt": True}, tabby.MAIN, "logging.prompt: legacy name of log_prompt"),
    "legacy-draft": ({"model.draft": {"draft_model_name": "d"}}, tabby.MAIN, "model.draft: legacy place"),
    "use_as_default": ({"model.use_as_default": ["max_seq_length"]}, tabby.MAIN, "model.use_as_default: 'max_seq_"),
    "capped": ({"model.max_seq_len": 65536, "model.cache_size": 32768}, tabby.MAIN, "model.max_seq_len: 65536 > cach"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_checker_names_what_is_wrong(plain: dict[str, Any], case: str) -> None:
    changes, commit, expected = BROKEN[case]
    assert tabby.check(plain, commit) == []
    errors = tabby.check(changed(plain, changes), commit)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_checker_suggests_the_key_meant(plain: dict[str, Any]) -> None:
    [error] = tabby.check(changed(plain, {"model.max_seq_length": 4096}), tabby.MAIN)
    assert error.endswith("did you mean 'max_seq_len'?")
