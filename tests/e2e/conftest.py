"""The end-to-end tests are opt-in: `make e2e` sets LLM_ROUTER_E2E=1 (it installs a 2.9 GB Open-WebUI venv once, and
Debian's chromium)."""

import os

E2E = ["test_openwebui.py", "test_openwebui_fleet.py", "test_console_browser.py"]
collect_ignore = [] if os.environ.get("LLM_ROUTER_E2E") == "1" else E2E
