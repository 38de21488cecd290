# `make run` and `make test` create ./.venv from the lock files when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-pgbouncer lint format lock clean bench reliability scale-test \
	scale-test-pgbouncer

run: $(VENV)/.runtime
	$(BIN)/python -m app migrate
	exec $(BIN)/python -m app serve

# pytest exits 5 when it collected nothing: say so, and fail.
test: lint
	$(BIN)/pytest || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests" >&2; exit $$status; }

# The PostgreSQL half of the tests (the Celery ones among them) again, through a real PgBouncer
# in transaction mode with fewer server connections than the tests open clients, as
# DB_TRANSACTION_POOLER=true; each pytest process starts its own (tests/pgbouncer.py), from
# Debian's pgbouncer package.
test-pgbouncer: $(VENV)/.dev
	TEST_PGBOUNCER=1 $(BIN)/pytest -k postgresql -p no:cacheprovider

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks against a raw ceiling (not part of `make test`): writes bench/REPORT.md.
# BENCH_QUICK=1 for a short matrix; BENCH_PARTS=argon2,http,latency,throughput to pick sections.
bench: $(VENV)/.bench
	$(BIN)/python -m bench.run

# Fault injection, schemathesis and the registration race on real processes (not part of
# `make test`), on a PostgreSQL cluster and Redis servers of their own; the machine's shared
# ones are never stopped. One line per scenario; figures in reliability/results/*.json.
reliability: $(VENV)/.reliability
	$(BIN)/pytest reliability -m reliability -p no:cacheprovider -rxX

# 2 APIs + 2 Celery workers, SCALE_REGISTRATIONS registrations (default 10000), beside
# 1 API + 1 worker (SCALE_BASELINE_REGISTRATIONS, default 2000).
scale-test: $(VENV)/.reliability
	$(BIN)/pytest reliability -m scale -p no:cacheprovider -rxX

# The same with every service through a PgBouncer of PGBOUNCER_POOL_SIZE (10) server
# connections in front of the cluster; results recorded as scale-*-pgbouncer.
scale-test-pgbouncer: $(VENV)/.reliability
	RELIABILITY_PGBOUNCER=1 $(BIN)/pytest reliability -m scale -p no:cacheprovider -rxX

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.lock | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	touch $@

$(VENV)/.dev: requirements-dev.lock | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	touch $@ $(VENV)/.runtime

$(VENV)/.bench: bench/requirements.lock $(VENV)/.dev
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r bench/requirements.lock
	touch $@

$(VENV)/.reliability: reliability/requirements.lock $(VENV)/.dev
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r reliability/requirements.lock
	touch $@

# Re-resolve the pinned versions after editing the dependencies in pyproject.toml.
lock: $(VENV)/.dev
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --quiet -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --quiet \
		-c requirements.lock -o requirements-dev.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
