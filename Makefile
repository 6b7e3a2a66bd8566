# `make run` starts the local stack, `make test` runs the whole suite. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install lock run demo migrate worker test test-unit lint format clean chromium

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

# Re-resolve the newest versions pyproject.toml allows, in a scratch venv, and pin them.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e ".[dev]"
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^#'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

migrate: install
	@mkdir -p var
	$(BIN)/alembic upgrade head

run: install
	$(BIN)/python -m ops.local_stack

demo: install
	$(BIN)/order-saga demo

worker: install
	$(BIN)/python -m entrypoints.worker

# The browser tests (marker `browser`) drive Debian's Chromium; Playwright's own download does not work here.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

chromium: $(CHROMIUM)

test: install chromium
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Fault injection against the real processes (stops and restarts the local RabbitMQ): make faults ORDERS=1000
ORDERS ?= 60
.PHONY: faults bench
faults: install
	$(BIN)/python -m tests.faults.harness --orders $(ORDERS)

# End-to-end benchmark: prints figures, writes results/bench-*.json. BENCH_ARGS="--quick" or "--variant ..."
bench: install
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)
