# The two commands (see README):
#   make run    set up the project virtualenv (idempotent) and run the main job: `semcode run`
#   make test   set up the project virtualenv (idempotent) and run the tests (ruff + pytest)
# torch==2.13.0 is installed first, on its own: with it in place, pip never pulls a CUDA build.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semcode-installed
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import torch, deepspeed, faiss, tokenizers, transformers, kfp" 2>/dev/null
	touch $(STAMP)

run: setup
	$(VENV)/bin/semcode run $(RUN_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collected no test: that fails here like any other non-zero code.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
