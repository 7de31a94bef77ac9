PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The demo needs jaxkd alone; test, lint and format add the test extras on top.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,tokenizers]'
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxkd demo

test: $(DEV_STAMP)
	$(PY) -m ruff check jaxkd tests benchmarks experiments
	$(PY) -m pytest -n 2 -q tests

lint: $(DEV_STAMP)
	$(PY) -m ruff check jaxkd tests benchmarks experiments
	$(PY) -m ruff format --check jaxkd tests benchmarks experiments

format: $(DEV_STAMP)
	$(PY) -m ruff format jaxkd tests benchmarks experiments
	$(PY) -m ruff check --fix jaxkd tests benchmarks experiments

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[benchmark]'
	$(PY) benchmarks/step.py
	$(PY) benchmarks/conv.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
