# One command each, on a fresh machine (python3, pip, git, make): each creates
# the virtualenv it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo events-demo test bench lint check clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job end to end on embedded defaults (no key, no cloud)
	$(PY) -m prefect_ig1.sandbox.demo

events-demo: $(STAMP)  ## S3 uploads -> SQS -> bridge -> Prefect trigger -> worker run (~2 min)
	$(PY) -m prefect_ig1.sandbox.events_demo

test: $(STAMP)  ## the whole test suite, offline
	$(PY) -m pytest

bench: $(STAMP)  ## the benchmark suite: a table of medians (~10 min; ARGS=--write-results)
	$(PY) -m benchmarks.suite $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check: lint test

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
