# Two commands set up a fresh machine: `make up` runs the stack, `make test` runs the tests.
# `make unit` is the fast loop: lint and the unit tier (no server, no network).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: up test lint unit containers images bench bench-peer bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,backend,splitter]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(PY) -m gateway_supervisor $(if $(CONFIG),--config $(CONFIG),)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	./scripts/system-deps.sh containers
	$(VENV)/bin/pytest -q -ra tests

unit: $(STAMP) lint
	./scripts/system-deps.sh
	$(VENV)/bin/pytest -q tests/unit

# The project's images (podman, or docker where it runs): docs/deploy/images.md.
images:
	./scripts/system-deps.sh containers
	./scripts/images.sh

# The container tier alone: the images, the compose stack and the pods, for real.
containers: $(STAMP)
	./scripts/system-deps.sh containers
	$(VENV)/bin/pytest -q -ra tests/containers

# The bench (about 15 minutes, each scenario alone): bench/results/report.md and plots.
# Its peer, LiteLLM, gets its own venv (.venv-litellm) first: its deps would move ours.
bench: $(STAMP) bench-peer
	$(PY) -m bench.run_all

bench-peer: $(STAMP)
	$(PY) -m bench.litellm_peer --install

# The same code on tiny counts (what CI runs); results in .cache/bench-smoke, not bench/results.
bench-smoke: $(STAMP) bench-peer
	BENCH_RESULTS=.cache/bench-smoke $(PY) -m bench.run_all --smoke

clean:
	rm -rf $(VENV) .venv-litellm .cache
