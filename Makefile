# agentwatch. The README's two commands: `make demo` (the pipeline demo) and `make test` (the whole suite; its
# session fixture starts and stops a real Kafka broker itself). Both create the virtualenv on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentwatch-installed
PIP_FLAGS := --disable-pip-version-check --no-input
# Extra pytest arguments, e.g. `make test PYTEST_ARGS='-m "not kafka"'` or `PYTEST_ARGS=tests/test_broker.py`.
PYTEST_ARGS ?=
# Extra demo arguments, e.g. `make demo DEMO_ARGS='--otlp-endpoint http://127.0.0.1:6006/v1/traces'`.
DEMO_ARGS ?=

.PHONY: venv demo test lint bench

# The venv is made once; pip runs again only when pyproject.toml is newer than the stamp of the last install.
venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_FLAGS) -q -e '.[test]'
	touch $@

# The demo exits 1 when any of its checks against the simulator's ground truth fails; its report.html is next to
# its outputs (the path is its last line).
demo: venv
	$(BIN)/agentwatch demo $(DEMO_ARGS)

# pytest's exit 5 means it collected no tests: never expected here, so say so (make fails on any non-zero exit).
test: venv
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); that is a failure" >&2; fi; \
	exit $$rc

lint: venv
	$(BIN)/ruff check .

# Benchmarks print their figures and a ratio to a baseline measured in the same run. They get a throw-away local
# Kafka (stopped afterwards) unless KAFKA_BOOTSTRAP_SERVERS names one.
bench: venv
	$(BIN)/python -m agentwatch.broker -- bash -c \
	  'set -e; for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python "$$f"; done'
