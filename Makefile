# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test lint bench bench-tiny sample notebooks browser spark format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: the usage report of the bundled sample dataset, and report.html beside it
demo: $(STAMP)
	@$(BIN)/usage-analytics summary data/sample --tenant tenant-005
	@echo
	@$(BIN)/usage-analytics groups data/sample --tenant tenant-005 --top 15
	@echo
	@$(BIN)/usage-analytics report data/sample --tenant tenant-005 --by model_id --metrics requests,total_tokens,error_rate,latency_ms_p50,latency_ms_p95
	@echo
	@$(BIN)/usage-analytics html data/sample --tenant tenant-005 --output report.html

## test: the whole test suite (unit, doctests, notebooks, HTML in a browser, crash and concurrency)
test: $(STAMP) browser spark
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## browser: Debian's Chromium, which the HTML report's test opens the report in (installed with
## apt-get where this runs as root; elsewhere that test is skipped and says why)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the HTML report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null) || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium is not installed: the browser test will be skipped"; fi; }

## spark: pyspark for the interop suite's Spark cases, in a folder of its own ($(SPARK_DIR)):
## installed beside pandera, pandera would import it in every process. Without Java (or when
## it cannot be installed) the Spark cases are skipped and say why.
SPARK_DIR := $(VENV)/pyspark
SPARK_VERSION := 4.0.1
spark: $(STAMP)
	@test -d $(SPARK_DIR)/pyspark || { \
	  if command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ]; then \
	    echo "installing pyspark $(SPARK_VERSION) into $(SPARK_DIR) for the Spark interop cases"; \
	    rm -rf $(SPARK_DIR).tmp; \
	    if $(BIN)/python -m pip install --quiet --target $(SPARK_DIR).tmp 'pyspark==$(SPARK_VERSION)'; \
	    then mv $(SPARK_DIR).tmp $(SPARK_DIR); \
	    else rm -rf $(SPARK_DIR).tmp; echo "could not install pyspark: the Spark cases will be skipped"; fi; \
	  else echo "Java is not installed: the Spark interop cases will be skipped"; fi; }

## notebooks: run both notebooks from the repository root and save them with their outputs
notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

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
