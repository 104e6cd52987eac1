"""The Open-WebUI end-to-end tests are opt-in: `make e2e` sets LLM_ROUTER_E2E=1 (it installs a 2.9 GB venv once)."""

import os

collect_ignore = [] if os.environ.get("LLM_ROUTER_E2E") == "1" else ["test_openwebui.py", "test_openwebui_fleet.py"]
