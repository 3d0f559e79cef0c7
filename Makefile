# Everything a fresh machine needs: `make demo` and `make test` create .venv when missing and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.leanml-installed
DEV_STAMP := $(VENV)/.leanml-dev-installed
# The torch leanml is tested with. pyproject.toml accepts a range, so `pip install leanml` keeps a
# user's own torch; the project's .venv pins this one.
TORCH ?= torch==2.13.0

.PHONY: install install-dev demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: `pip install torch==2.13.0` takes the CPU build these machines carry.
	$(PY) -m pip install --quiet '$(TORCH)'
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

# What the tests and linters need besides leanml itself (pytest, ruff, transformers, psycopg2, ...).
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(VENV)/bin/leanml run examples/digits.yaml --output runs/demo

lint: install-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

# The same lint, then every test but the end-to-end ones marked slow (whole runs, CLI runs, tuning).
test-fast: lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: install-dev
	$(PY) bench/run.py

clean:
	rm -rf runs bench/out .pytest_cache
