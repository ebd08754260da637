# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lobbyd serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check lobbyd tests
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

# Throughput, latency and memory figures; see BENCHMARKS.md. Needs two CPUs, and Redis
# and PostgreSQL for the cluster measurement (LOBBYD_BENCH_REDIS_URL, LOBBYD_BENCH_PG_DSN).
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
