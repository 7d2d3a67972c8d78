# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test lint bench bench-tiny sample format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: the usage report of the bundled sample dataset
demo: $(STAMP)
	$(BIN)/usage-analytics report data/sample --tenant tenant-005 --top 15

## test: the whole test suite (unit, doctests, notebook, crash and concurrency suites)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the side-by-side benchmark (10M rows by default; BENCH_ARGS="--rows 1000000" to shrink)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

## sample: regenerate data/sample from the synthetic generator
sample: $(STAMP)
	rm -rf data/sample
	$(BIN)/usage-analytics sample data/sample --rows 40000 --days 14 --start 2026-11-01 --seed 7 --tenants 6 --users 120 --keys 200 --methods 12 --models 6

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
