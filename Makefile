# make demo: set up everything and run the workflow on the embedded demo.
# make test: set up everything and run the test suite (what CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast report setup clean-results

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/local all
	$(BIN)/snakemake --report results/report.html
	@echo "Demo done: maps in results/maps/, metrics in results/evaluate/, report in results/report.html"

test: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then .ci/slurm/start.sh; \
	elif [ -n "$$CI" ]; then echo "CI must run as root to start the local SLURM"; exit 1; \
	else echo "not root: the SLURM tests will be skipped (sudo .ci/slurm/start.sh starts SLURM)"; fi
	@status=0; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -ra --durations=25 tests || status=$$?; \
	if [ "$$(id -u)" = 0 ]; then .ci/slurm/stop.sh || true; fi; exit $$status

test-fast: $(STAMP)
	$(BIN)/pytest -ra -m "not slow and not slurm" tests

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || { \
	  echo "installing python3-venv (Debian)"; apt-get update -qq && apt-get install -y -qq python3-venv python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

clean-results:
	rm -rf results logs benchmarks .snakemake
