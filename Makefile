# kvdisco developer entry points. `make run` and `make test` are the two a newcomer needs;
# both install the project into $(VENV) first (only again when pyproject.toml changes).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON3 ?= python3
STAMP   := $(VENV)/.installed

# Extra arguments, e.g. `make test PYTEST_ARGS='-m "not slow"'` or `make run RUN_ARGS='--log-format json'`.
PYTEST_ARGS ?=
RUN_ARGS    ?=

.PHONY: all install run test lint typecheck pytest bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(STAMP)

# Single node with the embedded defaults: name "default", data dir ./kvdisco-data,
# client API 127.0.0.1:2379, peers 127.0.0.1:2380.
run: install
	$(VENV)/bin/kvdisco serve $(RUN_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# Files and strictness come from [tool.mypy] in pyproject.toml.
typecheck: install
	$(VENV)/bin/mypy

# pytest's own exit code is the recipe's: exit 5 (no tests collected) fails the build.
pytest: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	$(PY) bench/raft_bench.py

# Leaves kvdisco-data/ and kvdisco-cluster/ alone: they hold data, not build output.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
