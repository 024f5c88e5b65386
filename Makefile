# One command each: `make demo` shows the engine working, `make test` is the gate.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv demo test check lint typecheck pytest bench format clean sandbox

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,s3]'
	@touch $@

venv: $(STAMP)

## Upload a generated E57 scan into the in-process sandbox, with live progress.
demo: venv
	$(BIN)/upload-engine demo

## Run the sandbox on http://127.0.0.1:8700 until Ctrl-C.
sandbox: venv
	$(BIN)/upload-engine sandbox serve --port 8700

lint: venv
	$(BIN)/ruff format --check engine tests benchmarks
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy --strict engine

pytest: venv
	$(BIN)/pytest -q

## The gate: formatting, lint, strict typing, every test.
check: lint typecheck pytest

test: check

format: venv
	$(BIN)/ruff format engine tests benchmarks
	$(BIN)/ruff check --fix engine tests benchmarks

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,s3,bench]'
	@touch $@

## Throughput against the tools users would pick instead (loopback; takes minutes).
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo
