# The README's two commands: `make demo` and `make test`. Each sets up what is missing first.
PYTHON ?= python3
VENV := .venv
IACVENV := .venv-iac
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit lint bench clean

setup: $(VENV)/.installed node_modules/.installed $(IACVENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov and pycep-parser pin their own trees; they live apart from the app's packages.
$(IACVENV)/.installed: requirements-iac.txt
	$(PYTHON) -m venv $(IACVENV)
	$(IACVENV)/bin/python -m pip install --quiet --upgrade pip
	$(IACVENV)/bin/python -m pip install --quiet -r requirements-iac.txt
	touch $@

demo: $(VENV)/.installed node_modules/.installed
	$(BIN)/autoretrain demo

# One worker per CPU, each test file on one worker (its module-scoped stacks and runs are made once).
test: setup
	$(BIN)/python -m pytest -n auto --dist loadfile

test-unit: $(VENV)/.installed
	$(BIN)/python -m pytest tests/unit

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/loop_latency.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/ingest_memory.py
	$(BIN)/python bench/storage_floor.py
	$(BIN)/python bench/cold_start.py

clean:
	rm -rf .autoretrain
