"""The role's filters and templates, loaded and rendered outside Ansible (for unit tests and engine-code checks).

Filter plugins are loaded by file path, as Ansible loads them (each file is a plugin of its own); templates are
rendered with jinja2, Ansible's own filter and test plugins, and `trim_blocks` on (the template module's default).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2

from tests.modules import load_module

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles/llm_router"

# roles/llm_router/vars/main.yml `_llm_router_paths` with the role's defaults (base /opt/llm-router).
PATHS = {
    "base_dir": "/opt/llm-router",
    "config_dir": "/etc/llm-router",
    "state_dir": "/var/lib/llm-router",
    "llama_server": "/opt/llm-router/bin/llama-server",
    "sglang_venv": "/opt/llm-router/engines/sglang/venv",
    "sglang_python": "/opt/llm-router/engines/sglang/venv/bin/python",
    "vllm_venv": "/opt/llm-router/engines/vllm/venv",
    "vllm_bin": "/opt/llm-router/engines/vllm/venv/bin/vllm",
    "tabbyapi_dir": "/opt/llm-router/engines/tabbyapi/main",
    "tabbyapi_exl2_dir": "/opt/llm-router/engines/tabbyapi/exl2",
}


def load_filter(name: str) -> ModuleType:
    """A filter_plugins module by file path (roles/llm_router/filter_plugins/<name>.py)."""
    return load_module(ROLE / f"filter_plugins/{name}.py")


models_f = load_filter("llm_router_models")


def normalize(models: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    """normalize_models with the default paths, an H100 + RTX PRO 6000 host unless `archs`/`acc` say otherwise."""
    return models_f.normalize_models(
        models,
        8100,
        kwargs.get("paths", PATHS),
        kwargs.get("archs", ["90", "120a"]),
        kwargs.get("acc", "cuda"),
        cuda_home=kwargs.get("cuda_home", ""),
    )


def render(template: str, **variables: Any) -> str:
    """Render a role template as Ansible's template module does: its own filters and tests, trim_blocks on."""
    from ansible.plugins.filter.core import FilterModule
    from ansible.plugins.test.core import TestModule

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True, keep_trailing_newline=True
    )
    env.filters.update(FilterModule().filters())
    env.tests.update(TestModule().tests())
    return env.get_template(template).render(ansible_managed="managed", **variables)
