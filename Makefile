# spitguard — developer entry points. `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench deps venv clean

# setup.py builds the C fast path of the SIP parser: a change to it reinstalls.
$(STAMP): pyproject.toml setup.py src/spitguard/sip/_cparse.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "spitguard needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests talk to (real peers). Safe to re-run; needs root or sudo.
deps:
	@PYTHON=$(PYTHON) bash scripts/install-deps.sh

run: $(STAMP)
	$(VENV)/bin/spitguard serve --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

test: deps $(STAMP) lint
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
