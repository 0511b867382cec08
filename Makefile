# Every target creates the virtualenv it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit bench clean

$(BIN)/registry-proxy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: set up and start the proxy (Docker Hub upstream, cache in ./cache)
run: $(BIN)/registry-proxy
	PROXY_STORAGE=$${PROXY_STORAGE:-./cache} $(BIN)/registry-proxy serve

## test: set up and run everything CI runs: ruff, mypy, the whole pytest suite
test: lint typecheck
	$(BIN)/pytest

lint: $(BIN)/registry-proxy
	$(BIN)/ruff check proxy tests infra
	$(BIN)/ruff format --check proxy tests infra

typecheck: $(BIN)/registry-proxy
	$(BIN)/mypy

unit: $(BIN)/registry-proxy
	$(BIN)/pytest -m 'not e2e'

bench: $(BIN)/registry-proxy
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
