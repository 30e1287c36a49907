# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with the CPU build of torch 2.13.0 and the package with [dev] if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

$(BIN)/maple: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/maple

.PHONY: install demo test
install: $(BIN)/maple

demo: $(BIN)/maple
	$(BIN)/maple demo --out demo_out

test: $(BIN)/maple
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q tests
