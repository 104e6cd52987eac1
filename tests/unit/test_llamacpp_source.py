"""The role's default llama.cpp source is the tree the tests build (issue 10).

scripts/build-llama-server.sh builds llama-server from vendor/llama.cpp of the llama-cpp-python sdist on PyPI; the
role's defaults must point at that same file, pinned by the same sha256, and unpack the same folder.
Sources: PyPI's simple index, https://pypi.org/simple/llama-cpp-python/, links llama_cpp_python-0.3.36.tar.gz to
files.pythonhosted.org/packages/ec/e9/e7de2b04.../llama_cpp_python-0.3.36.tar.gz#sha256=832db069...; the sdist's git
index pins vendor/llama.cpp at 0c1e57098bba43ac29e6e3b677cdceebdd22334f and its CHANGELOG.md (## [0.3.36]) says
"update llama.cpp to ggml-org/llama.cpp@0c1e57098" (b11312).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "scripts/build-llama-server.sh").read_text()
DEFAULTS = yaml.safe_load((ROOT / "roles/llm_router/defaults/main.yml").read_text())
ROLE_VARS = yaml.safe_load((ROOT / "roles/llm_router/vars/main.yml").read_text())


def script_default(name: str) -> str:
    match = re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"$', SCRIPT, re.MULTILINE)
    assert match, name
    return match.group(1)


SDIST_VERSION = script_default("LLAMA_CPP_PYTHON_VERSION")
SDIST = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"


def test_default_source_is_the_sdist_the_tests_build() -> None:
    source = DEFAULTS["llm_router_llamacpp_source"]
    assert source.startswith("https://files.pythonhosted.org/packages/") and source.endswith("/" + SDIST)
    assert DEFAULTS["llm_router_llamacpp_checksum"] == "sha256:" + script_default("LLAMA_CPP_PYTHON_SHA256")
    assert DEFAULTS["llm_router_llamacpp_archive_dir"] == f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp"
    version = "b" + script_default("LLAMA_BUILD_NUMBER")
    assert DEFAULTS["llm_router_llamacpp_version"] == version
    assert ROLE_VARS["_llm_router_llamacpp_sdist_builds"][SDIST] == version


def test_molecule_gets_the_cached_sdist() -> None:
    """`make molecule` passes the sdist the script keeps in its cache as LLAMACPP_ARCHIVE (the default layout)."""
    assert f'sdist="$CACHE_ROOT/src/{SDIST.replace(SDIST_VERSION, "$LLAMA_CPP_PYTHON_VERSION")}"' in SCRIPT
    assert f'/src/{SDIST}"; \\' in (ROOT / "Makefile").read_text()


def test_cached_sdist_has_the_pinned_sha256() -> None:
    cache = Path(os.environ.get("LLM_ROUTER_CACHE", Path.home() / ".cache/llm-router"))
    sdist = cache / "src" / SDIST
    if not sdist.is_file():
        pytest.skip(f"{sdist} not downloaded yet (scripts/build-llama-server.sh)")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert "sha256:" + digest == DEFAULTS["llm_router_llamacpp_checksum"]
