# Every target creates the virtualenv it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit bench bench-quick clean

# The runtime alone (make run), or the runtime plus everything the tests need (make test).
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

# The benchmarks also draw a chart: the test extras plus matplotlib (the bench extra).
$(VENV)/.installed-bench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-run

## run: set up and start the proxy (Docker Hub upstream, cache in ./cache)
run: $(VENV)/.installed-run
	PROXY_STORAGE=$${PROXY_STORAGE:-./cache} $(BIN)/registry-proxy serve

## test: set up and run everything CI runs: ruff, mypy, the whole pytest suite
test: lint typecheck
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check proxy tests infra
	$(BIN)/ruff format --check proxy tests infra

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -m 'not e2e'

## bench: side by side with distribution and a bare aiohttp server (docs/benchmarks.md);
## options in BENCH_ARGS, e.g. make bench BENCH_ARGS='--rounds 5 --only pulls,manifests'
bench: $(VENV)/.installed-bench
	cd tests && ../$(BIN)/python -m bench.run $(BENCH_ARGS)

## bench-quick: the same in under two minutes, as a smoke test (the figures are not comparable)
bench-quick: $(VENV)/.installed-bench
	cd tests && ../$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
