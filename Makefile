# `make run` and `make test` work on a fresh machine: they build .venv from requirements.txt first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint fuzz bench upgrade clean

# Rebuilt whenever requirements.txt is newer than the last install.
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Apply the database migrations (the app also does at start).
upgrade: $(VENV)/.installed
	$(BIN)/flask --app todo_api db upgrade

run: upgrade
	$(BIN)/flask --app todo_api run --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Schemathesis against a gunicorn server on loopback (FUZZ_DATABASE_URL picks the database).
fuzz: $(VENV)/.installed
	$(BIN)/python scripts/fuzz.py $(FUZZ_ARGS)

# The benchmark against a bare Flask route (DATABASE_URL picks PostgreSQL; BENCH_ARGS="--seconds 10").
bench: $(VENV)/.installed
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
