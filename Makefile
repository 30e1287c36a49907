# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with torch 2.13.0 (TORCH below) and the package with [dev] if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2
# Where pip's index has no CPU build of torch: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

$(BIN)/maple: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/maple

.PHONY: install demo test
install: $(BIN)/maple

demo: $(BIN)/maple
	$(BIN)/maple demo --out demo_out

test: $(BIN)/maple
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q tests
