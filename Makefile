# llm-router: `make demo` runs the router with two tiny real models; `make test` runs what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(HOME)/.cache/llm-router
DEMO_DIR := demo
STAMP := $(VENV)/.installed

.PHONY: demo demo-assets test lint unit integration molecule bench llama-server clean help

help:
	@echo "make demo   - router on 127.0.0.1:8002 with two tiny llama.cpp models (no GPU, no root)"
	@echo "make test   - lint + all tests (what CI runs)"
	@echo "make e2e    - a real Open-WebUI against the demo router (part of make test)"
	@echo "make lint   - ruff, ansible-lint, playbook syntax check"
	@echo "make bench  - benchmarks; writes docs/benchmarks.md"
	@echo "make gpu-smoke - on a real NVIDIA host: converge the role, one small model per engine (not in test)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ansible]'
	touch $@

llama-server: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build-llama-server.sh >/dev/null

demo: $(STAMP) llama-server
	$(BIN)/python -m router_app.devtools.demo --dir $(DEMO_DIR) \
		--llama-server "$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"
	$(BIN)/llm-router serve --config $(DEMO_DIR)/config.yml

lint: $(STAMP)
	$(BIN)/ruff check router_app tests roles molecule bench
	$(BIN)/ruff format --check router_app tests roles molecule bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --offline --profile production
	$(BIN)/ansible-playbook site.yml -i inventories/example --syntax-check
	$(BIN)/ansible-playbook site.yml -i inventories/local --syntax-check

demo-assets: $(STAMP) llama-server
	$(BIN)/python -m router_app.devtools.demo --dir $(DEMO_DIR) \
		--llama-server "$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"

# Role test on a real systemd: Debian 12 booted with systemd-nspawn (needs root).
molecule: $(STAMP) llama-server
	set -e; \
	rootfs="$$(molecule/scripts/rootfs.sh)"; \
	llama_bin="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"; \
	archive="$$(dirname "$$(dirname "$$(dirname "$$llama_bin")")")/src/llama_cpp_python-0.3.36.tar.gz"; \
	models="$$(mktemp -d)"; \
	$(BIN)/python -m router_app.devtools.tiny_gguf "$$models/tiny-a.gguf" --name tiny-a --seed 1 >/dev/null; \
	$(BIN)/python -m router_app.devtools.tiny_gguf "$$models/tiny-b.gguf" --name tiny-b --seed 2 >/dev/null; \
	export PATH="$(CURDIR)/$(BIN):$$PATH" NSPAWN_ROOTFS="$$rootfs" LLAMACPP_ARCHIVE="$$archive" \
		MOLECULE_MODELS_DIR="$$models" ANSIBLE_HOME="$(CURDIR)/.ansible" \
		MOLECULE_EPHEMERAL_DIRECTORY="$(CURDIR)/.ansible/molecule/default"; \
	molecule test -s default; rc=$$?; rm -rf "$$models"; exit $$rc

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python -m pytest tests/integration -q

# Every engine install lane (roles/llm_router/vars/main.yml) resolves with pip against PyPI, metadata only,
# and links the CUDA major it claims. Reports are cached in ~/.cache/llm-router/pip-check.
.PHONY: check-engines
check-engines: $(STAMP)
	$(BIN)/python scripts/check_engines.py

test: lint llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python -m pytest -q -ra
	$(MAKE) check-engines
	$(MAKE) e2e
	$(MAKE) molecule

# A real Open-WebUI 0.12.4 (own venv, installed once into ~/.cache/llm-router) in front of the demo router.
.PHONY: e2e
e2e: $(STAMP) llama-server
	set -e; venv="$$(scripts/openwebui-venv.sh)"; \
	llama_bin="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"; \
	OPENWEBUI_VENV="$$venv" LLAMA_SERVER_BIN="$$llama_bin" LLM_ROUTER_E2E=1 \
		$(BIN)/python -m pytest tests/e2e -v -p no:cacheprovider

# Benchmarks (not part of `make test`): writes docs/benchmarks.md.
bench: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python bench/run_all.py

# Real NVIDIA GPU host only, not part of `make test`: converges the role on this machine (root or sudo)
# with one small model per engine and drives them through the router. See docs/provisioning.md.
.PHONY: gpu-smoke
gpu-smoke: $(STAMP)
	$(BIN)/python scripts/gpu_smoke.py $(SMOKE_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
