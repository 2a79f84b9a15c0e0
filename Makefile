# trainmaster — the two commands: `make run` (whole stack + a real training job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP    := $(VENV)/.test-installed

.PHONY: run up test lint unit integration e2e bench schema clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e ".[test]"
	# PyTorch (CPU) for the 3-node sample and its test: the exact version, installed on its own, so pip
	# takes the CPU build and no dependency range can pull a CUDA one (about 20 s, 750 MB)
	$(PY) -m pip install -q torch==2.13.0
	touch $@

## run: start nats-server, the five services and one agent, run the sample job, stay up until Ctrl-C
run: $(RUNTIME_STAMP)
	$(VENV)/bin/trainmaster demo

## up: the same stack without the sample job
up: $(RUNTIME_STAMP)
	$(VENV)/bin/trainmaster up

## test: lint, then unit, integration and end-to-end tests (pytest exit 5, "no tests", fails too)
test: $(TEST_STAMP) lint
	$(VENV)/bin/pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

unit: $(TEST_STAMP)
	$(VENV)/bin/pytest -q tests/unit
integration: $(TEST_STAMP)
	$(VENV)/bin/pytest -q tests/integration
e2e: $(TEST_STAMP)
	$(VENV)/bin/pytest -q tests/e2e

## bench: the figures of docs/benchmarks.md (JSON results in .trainmaster/bench/)
bench: $(TEST_STAMP)
	$(PY) -m bench.latency --jobs 30 --out .trainmaster/bench/latency.json
	$(PY) -m bench.submit_throughput --requests 10000 --out .trainmaster/bench/submit_throughput.json
	$(PY) -m bench.notify_throughput --json .trainmaster/bench/notify_throughput.json
	$(PY) -m bench.scheduler_throughput --out .trainmaster/bench/scheduler_throughput.json
	$(PY) -m bench.scheduler_throughput --rate 1000 --out .trainmaster/bench/scheduler_paced.json

## schema: regenerate docs/schemas from the message types
schema: $(RUNTIME_STAMP)
	$(VENV)/bin/trainmaster schema

clean:
	rm -rf .trainmaster .pytest_cache .ruff_cache
