# The two commands of the README. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: demo up test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

## demo: install Bastion and run the demo end to end on the embedded default (no network, no keys)
demo: $(VENV)/.installed
	$(BIN)/bastion demo

## up: install Bastion and start it on the embedded default (SQLite in ~/.local/share/bastion)
up: $(VENV)/.installed
	$(BIN)/bastion up --port $(PORT)

## test: install the test extras, run the linters, the type checker and the whole suite
test: $(VENV)/.installed-test
	bash scripts/services.sh
	bash scripts/install-sandboxes.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/pyright
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/pyright

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

## bench: the benchmarks (SQLite, and PostgreSQL when it is reachable); `make bench` runs them all
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/api.py
	$(BIN)/python bench/journal.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/observe.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
