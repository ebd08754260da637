# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck clean fuzz crash-test soak stalled

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

# Long runs for docs/reliability.md, not part of `make test`. Each starts its own daemon on
# a loopback port. Override the length, for example: make fuzz FUZZ_SECONDS=600
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m reliability.fuzz --seconds $(FUZZ_SECONDS)

CRASH_KILLS ?= 50
crash-test: $(STAMP)
	$(BIN)/python -m reliability.crash --kills $(CRASH_KILLS)

stalled: $(STAMP)
	$(BIN)/python -m reliability.stalled

SOAK_MINUTES ?= 12
SOAK_BOTS ?= 2000
soak: $(STAMP)
	$(BIN)/python -m reliability.soak --minutes $(SOAK_MINUTES) --bots $(SOAK_BOTS)

lint: $(STAMP)
	$(BIN)/ruff check lobbyd tests reliability
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
