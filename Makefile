# trainmaster — the two commands: `make run` (whole stack + a real training job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP    := $(VENV)/.test-installed

# every install comes from a lock (exact versions and hashes); a filled wheelhouse/ (make wheelhouse)
# makes the installs work off-line
PIP_INSTALL := $(PY) -m pip install -q --require-hashes --no-deps $(if $(wildcard wheelhouse/*.whl),--no-index --find-links wheelhouse)
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--find-links /opt/wheels --no-header --quiet

.PHONY: run up test lint unit integration e2e chaos bench schema clean lock lock-upgrade wheelhouse

# the venv's own pip (the one Python ships) installs the locks: nothing unpinned is fetched
$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements-runtime.lock pyproject.toml | $(PY)
	$(PIP_INSTALL) -r requirements-runtime.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(TEST_STAMP): requirements-test.lock $(RUNTIME_STAMP)
	$(PIP_INSTALL) -r requirements-test.lock
	touch $@

## lock: re-resolve requirements-*.lock after a change to pyproject.toml, keeping every pin that still fits
lock: $(TEST_STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in $(LOCK_FLAGS) $(UV_FLAGS) \
		-o requirements-runtime.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra test requirements/build.in requirements/torch-cpu.in \
		requirements/lock-tools.in -c requirements-runtime.lock $(LOCK_FLAGS) $(UV_FLAGS) -o requirements-test.lock

## lock-upgrade: the newest versions of everything that pyproject.toml allows (then run make test)
lock-upgrade:
	$(MAKE) lock UV_FLAGS=--upgrade

## wheelhouse: download every locked wheel into wheelhouse/, so later installs need no network
wheelhouse: | $(PY)
	$(PY) -m pip download -q --require-hashes --no-deps -r requirements-test.lock -d wheelhouse

## run: start nats-server, the services (the HTTP API too) and one agent, run the sample job, stay up until Ctrl-C
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
	$(PY) -m bench.latency --jobs 30 --gap 0 --out .trainmaster/bench/latency_no_gap.json
	$(PY) -m bench.submit_throughput --requests 20000 --out .trainmaster/bench/submit_throughput.json
	$(PY) -m bench.notify_throughput --json .trainmaster/bench/notify_throughput.json
	$(PY) -m bench.scheduler_throughput --out .trainmaster/bench/scheduler_throughput.json
	$(PY) -m bench.scheduler_throughput --rate 1000 --out .trainmaster/bench/scheduler_paced.json
	$(PY) -m bench.scheduler_throughput --agents 10000 --jobs 100000 --queue-first --gang 256 --churn-rate 0 \
		--out .trainmaster/bench/scheduler_scale.json
	$(PY) -m bench.api --creates 200 --seconds 5 --out .trainmaster/bench/api.json
	$(PY) -m bench.node_start --runs 20 --out .trainmaster/bench/node_start.json

## chaos: the fault-injection suite (every fault, hundreds of jobs; ~15 min): table in docs/reliability.md
chaos: $(TEST_STAMP)
	$(PY) -m chaos --faults all --jobs 40 --interval 0.5 --json .trainmaster/chaos/full.json

## schema: regenerate docs/schemas from the message types
schema: $(RUNTIME_STAMP)
	$(VENV)/bin/trainmaster schema

clean:
	rm -rf .trainmaster .pytest_cache .ruff_cache
