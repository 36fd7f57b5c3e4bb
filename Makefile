# nurture: `make run` starts everything on embedded defaults; `make test` installs and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test lint fmt migrate bench services clean

help: ## Show these targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("nurture needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## Install nurture and its dev tools into .venv

run: $(STAMP) ## Start web + worker + beat on embedded defaults (SQLite, no Redis, mail to var/mail/)
	$(BIN)/nurture run

services: ## Start local PostgreSQL and Redis if they are installed but stopped
	@./scripts/ensure-services.sh

test: $(STAMP) services ## Install, then run the whole test suite (PostgreSQL and Redis included)
	$(BIN)/pytest

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP) ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(STAMP) ## Apply database migrations (NURTURE_DATABASE_URL, default SQLite under var/)
	$(BIN)/nurture db upgrade

bench: $(STAMP) services ## Run the benchmarks in bench/ and print their numbers
	$(BIN)/python bench/send_throughput.py

clean: ## Remove the virtualenv and local state under var/
	rm -rf $(VENV) var
