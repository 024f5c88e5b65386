# One command each: `make demo` shows the engine working, `make test` is the gate.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv demo test check lint typecheck pytest bench format clean sandbox FORCE

# The editable install is "strict" (setuptools' documented mode): a .pth to a tree of file
# links, which mypy and other static tools follow (the default mode is an import hook they
# cannot). Links cover the files there were: $(FILES) lists them, and a new or removed module
# reinstalls on the next `make`.
FILES := $(VENV)/.files
$(FILES): FORCE
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	@find engine -name '*.py' -o -name '*.graphql' -o -name py.typed | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

FORCE:

$(STAMP): pyproject.toml $(FILES)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,s3]' \
		--config-settings editable_mode=strict
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
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,s3,bench]' \
		--config-settings editable_mode=strict
	@touch $@

## Throughput against the tools users would pick instead (loopback; takes minutes).
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo
