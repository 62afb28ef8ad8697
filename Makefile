# Two commands set up a fresh machine: `make up` runs the stack, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: up test lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(PY) -m gateway_supervisor $(if $(CONFIG),--config $(CONFIG),)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	./scripts/system-deps.sh
	$(VENV)/bin/pytest -q -ra

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .cache
