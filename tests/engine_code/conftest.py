"""The engines' own code as judge (`make check-engine-code`, part of `make test`).

Opt-in like the e2e tests: `make check-engine-code` prepares the engine venvs (scripts/engine-code-venvs.sh, cached
under ~/.cache/llm-router/engine-code), passes them in $ENGINE_CODE_VENVS (tests/engine_code/engines.py reads it) and
sets LLM_ROUTER_ENGINE_CODE=1; a plain `pytest` run skips this folder. probes/ run inside the engine venvs, stubs/ are
import-time stand-ins for their GPU-only modules, requirements/ are the venvs' exact package lists.
"""

from __future__ import annotations

import os

if os.environ.get("LLM_ROUTER_ENGINE_CODE") != "1":
    collect_ignore_glob = ["test_*.py"]
