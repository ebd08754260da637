# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-quick clean fuzz crash-test soak stalled

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# make run CONFIG=path/to/lobbyd.toml starts the daemon with that file.
CONFIG ?=
run: $(STAMP)
	$(BIN)/lobbyd serve $(if $(CONFIG),--config "$(CONFIG)")

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

# Throughput, latency and memory figures; see BENCHMARKS.md. Needs two CPUs, and Redis
# and PostgreSQL for the cluster measurement (LOBBYD_BENCH_REDIS_URL, LOBBYD_BENCH_PG_DSN).
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Install as a systemd service: a virtual environment under PREFIX, the units, a
# default configuration and the state directory. Every path can be overridden,
# and DESTDIR stages the whole tree elsewhere: make install DESTDIR=/tmp/stage
DESTDIR    ?=
PREFIX     ?= /opt/lobbyd
SYSCONFDIR ?= /etc/lobbyd
UNITDIR    ?= /etc/systemd/system
STATEDIR   ?= /var/lib/lobbyd
INSTALL    := DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" UNITDIR="$(UNITDIR)" \
              STATEDIR="$(STATEDIR)" PYTHON="$(PYTHON)" sh systemd/install.sh

.PHONY: install install-venv install-units install-config install-state uninstall

install: install-venv install-units install-config install-state
	$(INSTALL) system

install-venv:
	$(INSTALL) venv

install-units:
	$(INSTALL) units

install-config:
	$(INSTALL) config

install-state:
	$(INSTALL) state

uninstall:
	$(INSTALL) uninstall
