"""The engines' own code as judge (`make check-engine-code`, part of `make test`).

Opt-in like the e2e tests: `make check-engine-code` prepares the engine venvs (cached under ~/.cache/llm-router) and
sets LLM_ROUTER_ENGINE_CODE=1; a plain `pytest` run skips this folder.
"""

from __future__ import annotations

import os

if os.environ.get("LLM_ROUTER_ENGINE_CODE") != "1":
    collect_ignore_glob = ["test_*.py"]
