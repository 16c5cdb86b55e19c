# The two commands of the README. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
WHEELHOUSE := $(VENV)/wheelhouse
PIP_VERSION := 26.3
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# Installs are pinned by the lock (every package of every extra; `make lock` remakes it). pip warns
# once per package about index folders some machines' pip configuration names but lacks: drop those.
PIP_INSTALL = $(BIN)/python -m pip install --quiet --constraint $(LOCK)
QUIET = 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo up test lint lock bench clean

$(BIN)/python:
	@echo "== Creating $(VENV) and installing pip $(PIP_VERSION) (a few seconds)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==$(PIP_VERSION)" $(QUIET)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	@echo "== Installing Bastion and its pinned dependencies into $(VENV) (usually 1-2 minutes, quiet until done)"
	$(PIP_INSTALL) -e . $(QUIET)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(LOCK) | $(BIN)/python
	@echo "== Installing Bastion with the test extras into $(VENV) (usually 1-3 minutes, quiet until done)"
	$(PIP_INSTALL) -e '.[test]' $(QUIET)
	touch $@ $(VENV)/.installed

# The wheels of the demo's agent images (openai for sdk-packer), fetched at install time so that the
# demo builds its image from them alone, with no package index; `bastion demo` finds them here.
$(WHEELHOUSE)/.complete: $(wildcard examples/demo/*.yaml) $(LOCK) scripts/demo_wheelhouse.py | $(VENV)/.installed
	@echo "== Fetching the wheels of the demo's agent images into $(WHEELHOUSE) (about 6 MB, usually under 30 s)"
	$(BIN)/python scripts/demo_wheelhouse.py examples/demo $(WHEELHOUSE)
	touch $@

## demo: install Bastion and run the demo end to end on the embedded default (no network, no keys)
demo: $(VENV)/.installed $(WHEELHOUSE)/.complete
	$(BIN)/bastion demo

## up: install Bastion and start it on the embedded default (SQLite in ~/.local/share/bastion);
## the port is `make up PORT=…`, else $BASTION_PORT, else 8080
up: $(VENV)/.installed
	$(BIN)/bastion up $(if $(PORT),--port $(PORT))

## test: install the test extras, run the linters, the type checker and the whole suite
test: $(VENV)/.installed-test
	$(BIN)/python scripts/check_lock.py
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

## lock: re-resolve requirements.lock after a change to pyproject.toml's dependencies (pins that still
## fit are kept; `make lock UPGRADE=1` moves every pin to the newest release)
lock: $(VENV)/.installed-test
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
		--no-emit-index-url --custom-compile-command "make lock" --quiet \
		$(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(BIN)/python scripts/check_lock.py --stamp

$(VENV)/.installed-bench: pyproject.toml $(LOCK) | $(BIN)/python
	@echo "== Installing Bastion with the test and bench extras into $(VENV) (usually 1-3 minutes, quiet until done)"
	$(PIP_INSTALL) -e '.[test,bench]' $(QUIET)
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

## bench: the benchmarks (SQLite, and PostgreSQL when it is reachable); `make bench` runs them all
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/api.py
	$(BIN)/python bench/journal.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/observe.py
	$(BIN)/python bench/provenance.py
	$(BIN)/python bench/cli_startup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
