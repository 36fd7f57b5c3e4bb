# nurture: `make run` starts everything on embedded defaults; `make test` installs and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test chromium compose-client soak lint fmt migrate bench services clean

help: ## Show these targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("nurture needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## Install nurture and its dev tools into .venv

# nurture never assumes development: an unset NURTURE_ENV means production (a real secret key, Secure
# cookies). The targets that run it on a developer's machine choose development, unless you chose already.
run migrate bench: export NURTURE_ENV ?= development

run: $(STAMP) ## Start web + worker + beat on embedded defaults (SQLite, no Redis, mail to var/mail/)
	$(BIN)/nurture run

services: ## Start local PostgreSQL and Redis if they are installed but stopped; install test tools
	@./scripts/ensure-services.sh
	@./scripts/ensure-tools.sh

# The fault-injection scenarios run real worker processes against the clock, alone; everything else runs on
# every core (pytest-xdist; each test process has its own PostgreSQL database and Redis db).
TEST_WORKERS ?= auto

test: $(STAMP) services chromium compose-client ## Install, then run the whole test suite (PostgreSQL and Redis included)
	$(BIN)/pytest -n $(TEST_WORKERS) --ignore=tests/scenarios/faults
	$(BIN)/pytest tests/scenarios/faults

chromium: ## Install Debian's chromium for the browser test if missing (needs root + apt-get; never fatal)
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
		{ echo "installing chromium"; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null 2>&1; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || echo "apt-get install chromium failed" >&2; }

compose-client: ## Install Debian's docker-compose to validate docker-compose.yml offline, if no compose client
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || \
		[ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
		{ echo "installing docker-compose"; export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq --no-install-recommends docker-compose \
		>/dev/null 2>&1; } || echo "apt-get install docker-compose failed" >&2; }

soak: $(STAMP) services ## The long fault-injection run: 100 worker kills over 10,000 emails
	NURTURE_SOAK_KILLS=100 NURTURE_SOAK_EMAILS=10000 $(BIN)/pytest -s \
		tests/scenarios/faults/test_worker_faults.py::test_sigkilled_workers_lose_nothing_and_leave_at_most_one_unknown_per_kill

lint: $(STAMP) ## ruff check and format check, and the layering contract (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: $(STAMP) ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(STAMP) ## Apply database migrations (NURTURE_DATABASE_URL, default SQLite under var/)
	$(BIN)/nurture db upgrade

bench: $(STAMP) services ## Run the six benchmarks one by one and write docs/benchmarks.md (BENCH_QUICK=1: smoke run)
	$(BIN)/python bench/run_all.py

clean: ## Remove the virtualenv and local state under var/
	rm -rf $(VENV) var
