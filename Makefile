# The two commands a new user needs are `make demo` and `make test` (README).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Set before Python starts, in every process (Beam workers inherit them).
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONWARNINGS := ignore::FutureWarning,ignore::DeprecationWarning

PY := $(CURDIR)/.venv/bin/python
DEMO_DIR ?= $(CURDIR)/demo_output

.PHONY: help setup demo test test-fast lock clean

help:
	@echo "make demo       set up if needed, run the main job on the embedded synthetic data"
	@echo "make test       set up if needed, run every test (unit + e2e)"
	@echo "make test-fast  unit tests only (pytest -m 'not e2e')"
	@echo "make lock       regenerate requirements.lock from requirements.txt"

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh "$(DEMO_DIR)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

lock:
	uv pip compile --quiet --python-version 3.10 --generate-hashes requirements.txt -o requirements.lock

clean:
	rm -rf "$(DEMO_DIR)" .pytest_cache
