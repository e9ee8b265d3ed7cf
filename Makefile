# Set-up and everyday commands. Everything runs from the virtual environment at .venv/.
#   make main   - create .venv if needed, then run the main job (CE vs risk-calibrated, embedded default)
#   make test   - create .venv if needed, then run the default test suite
#   make docs   - install the docs extra if needed, then build the documentation site strictly into site/
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup main test test-slow test-all bench docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first: on these machines pip takes both builds from local disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

setup: $(VENV)/.installed

main: setup
	$(PY) scripts/main_job.py $(ARGS)   # e.g. make main ARGS="--verbose true"

test: setup
	$(PY) -m pytest

# Slow and real-data tests (real data: ../shared/data, skipped when absent).
test-slow: setup
	$(PY) -m pytest -m "slow or realdata"

test-all: test test-slow

bench: setup
	$(PY) -m benchmarks

# The documentation site (mkdocs.yml, docs/): the docs extra on top of setup, then a build where warnings are errors.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: setup $(VENV)/.docs-installed
	$(PY) -m mkdocs build --strict
