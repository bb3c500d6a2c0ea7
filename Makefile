# GlucoScope developer commands. `make run` and `make test` install everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck bench-ingest worker beat migrate clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

## make run: SQLite + in-process tasks; seeds the demo and prints the logins, then serves on 127.0.0.1:8000.
run: export DEBUG ?= true
run: install migrate
	$(BIN)/python manage.py seed_demo --json
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

## make test: the whole suite (integration tests need DATABASE_URL=postgres://… and REDIS_URL).
test: export SECRET_KEY ?= test-only-secret-key-not-for-production-0123456789
# Tests run in production mode (DEBUG=false) but speak plain HTTP to their own test servers.
test: export SECURE_SSL_REDIRECT ?= false
test: install
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/ruff check .
	DEBUG=true $(BIN)/mypy glucoscope api notifications
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

typecheck: install
	DEBUG=true $(BIN)/mypy glucoscope api notifications

## make bench-ingest: HTTP ingest throughput against PostgreSQL, next to COPY and bare-insert ceilings.
bench-ingest: export SECRET_KEY ?= bench-only-secret-key-not-for-production-0123456789
bench-ingest: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/glucoscope_bench
# Production-like: ingest enqueues to Redis (db 13, purged afterwards) instead of running tasks in the request.
bench-ingest: export REDIS_URL ?= redis://127.0.0.1:6379/13
bench-ingest: install
	psql "$${DATABASE_URL%/*}/postgres" -tc "SELECT 1 FROM pg_database WHERE datname = '$${DATABASE_URL##*/}'" | grep -q 1 \
	  || psql "$${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE $${DATABASE_URL##*/}"
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py bench_ingest $(BENCH_ARGS)

## make loadtest: 500 phones, 5 vendors and 20 clinicians against gunicorn + Celery on loopback for
## LOADTEST_SECONDS (120); the last line is the verdict (docs/benchmarks.md, "Load test"). LOADTEST_ARGS for options.
.PHONY: loadtest
loadtest: export SECRET_KEY ?= loadtest-only-secret-key-not-for-production-0123456789
loadtest: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/glucoscope_load
# The load test's own Redis database: broker and cache, purged before and after the run.
loadtest: export REDIS_URL ?= redis://127.0.0.1:6379/12
loadtest: install
	psql "$${DATABASE_URL%/*}/postgres" -tc "SELECT 1 FROM pg_database WHERE datname = '$${DATABASE_URL##*/}'" | grep -q 1 \
	  || psql "$${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE $${DATABASE_URL##*/}"
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py loadtest $(LOADTEST_ARGS)

worker: install
	$(BIN)/celery -A glucoscope worker -Q ingest,forecasting,notifications,batch --loglevel=INFO

beat: install
	$(BIN)/celery -A glucoscope beat --loglevel=INFO

clean:
	rm -rf $(VENV) var .pytest_cache

## make bench-stratify: glucotype stratification, 10,000 synthetic patients x 14 days (Euclidean, DTW) + Hall_2018 cross-tab.
.PHONY: bench-stratify
bench-stratify: install
	$(BIN)/python -m forecasting.stratification_bench $(BENCH_ARGS)

## make screenshots: PNGs of the triage dashboard and a patient page into docs/img/ (Playwright + /usr/bin/chromium).
.PHONY: screenshots
screenshots: export SECRET_KEY ?= test-only-secret-key-not-for-production-0123456789
screenshots: export SECURE_SSL_REDIRECT ?= false
screenshots: install
	GLUCOSCOPE_SCREENSHOTS=docs/img $(BIN)/pytest tests/browser -q -p no:cacheprovider

## make bench-notify: notifications/s through firebase-admin send_each (batches of 500) against the local FCM stub.
.PHONY: bench-notify
bench-notify: install
	$(BIN)/python -m notifications.fcm_stub --bench $${BENCH_COUNT:-5000} --repeats 3

## make bench-forecast: forecast_csv origins/s, batched service inference vs raw forward pass, POST-to-forecast p50/p95
## with a real Celery worker (database glucoscope_bench, Redis db 11, both cleaned up afterwards).
.PHONY: bench-forecast
bench-forecast: export SECRET_KEY ?= bench-only-secret-key-not-for-production-0123456789
bench-forecast: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/glucoscope_bench
bench-forecast: export REDIS_URL ?= redis://127.0.0.1:6379/11
bench-forecast: install
	psql "$${DATABASE_URL%/*}/postgres" -tc "SELECT 1 FROM pg_database WHERE datname = '$${DATABASE_URL##*/}'" | grep -q 1 \
	  || psql "$${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE $${DATABASE_URL##*/}"
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py bench_forecast $(BENCH_ARGS)

## make bench-workers: patients forecast per second with 1, 2 and 4 forecasting Celery worker processes
## (docs/scaling.md; database glucoscope_bench, Redis db 11; its patients are deleted afterwards).
.PHONY: bench-workers
bench-workers: export SECRET_KEY ?= bench-only-secret-key-not-for-production-0123456789
bench-workers: export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/glucoscope_bench
bench-workers: export REDIS_URL ?= redis://127.0.0.1:6379/11
bench-workers: install
	psql "$${DATABASE_URL%/*}/postgres" -tc "SELECT 1 FROM pg_database WHERE datname = '$${DATABASE_URL##*/}'" | grep -q 1 \
	  || psql "$${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE $${DATABASE_URL##*/}"
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py bench_workers $(BENCH_ARGS)

## make fuzz: schemathesis over every operation in /api/schema/ as every role, longer than the CI run
## (FUZZ_MAX_EXAMPLES per operation × role, default 200 here, 10 in `make test`).
.PHONY: fuzz
fuzz: export SECRET_KEY ?= test-only-secret-key-not-for-production-0123456789
fuzz: export SECURE_SSL_REDIRECT ?= false
fuzz: export FUZZ_MAX_EXAMPLES ?= 200
fuzz: export FUZZ_FOREIGN_EXAMPLES ?= 20
fuzz: install
	$(BIN)/pytest tests/fuzz -q -p no:cacheprovider $(PYTEST_ARGS)
