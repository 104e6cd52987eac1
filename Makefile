# llm-router: `make demo` runs the router with two tiny real models; `make test` runs what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(HOME)/.cache/llm-router
DEMO_DIR := demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration llama-server clean help

help:
	@echo "make demo   - router on 127.0.0.1:8002 with two tiny llama.cpp models (no GPU, no root)"
	@echo "make test   - lint + all tests (what CI runs)"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

llama-server: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build-llama-server.sh >/dev/null

demo: $(STAMP) llama-server
	$(BIN)/python -m router_app.devtools.demo --dir $(DEMO_DIR) \
		--llama-server "$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)"
	$(BIN)/llm-router serve --config $(DEMO_DIR)/config.yml

lint: $(STAMP)
	$(BIN)/ruff check router_app tests
	$(BIN)/ruff format --check router_app tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP) llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python -m pytest tests/integration -q

test: lint llama-server
	LLAMA_SERVER_BIN="$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh)" $(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
