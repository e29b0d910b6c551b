# The two commands (see README):
#   make run    set up the project virtualenv (idempotent) and run the main job: `semcode run`
#   make test   set up the project virtualenv (idempotent) and run the tests (ruff + pytest)
# The set-up installs the exact versions in requirements-test.lock (which includes requirements.lock);
# `make lock` regenerates both from pyproject.toml's ranges in a fresh venv (tools/lock.py says how).
# torch==2.13.0 (the lock's torch) is installed first, on its own: with it in place, pip never pulls a CUDA build.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semcode-installed
LOCKS := requirements.lock requirements-test.lock
TORCH_PIN = $(shell grep '^torch==' requirements.lock)
PIP_PIN = $(shell grep '^pip==' requirements-test.lock)
LOCK_VENV := .venv-lock
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint lock clean image-local test-containers

setup: $(STAMP)

# --no-build-isolation: the build backend comes from the lock too, not from the newest setuptools.
# --no-compile, then compileall on every core: pip byte-compiles each package on one core (about 95 s
# of a 170 s set-up on 2 cores), compileall with workers=0 in about 45 s. Files that do not compile
# (templates some packages ship as .py) are skipped, as pip skips them.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) '$(PIP_PIN)'
	$(PIP_INSTALL) '$(TORCH_PIN)'
	$(PIP_INSTALL) -r requirements-test.lock
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	$(PY) -c "import torch, deepspeed, faiss, tokenizers, transformers, kfp"
	touch $(STAMP)

run: setup
	$(VENV)/bin/semcode run $(RUN_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collected no test: that fails here like any other non-zero code.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# A fresh resolution of pyproject.toml's ranges (torch first, as in the set-up), frozen into the lock files.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[test]'
	$(LOCK_VENV)/bin/python tools/lock.py
	rm -rf $(LOCK_VENV)

# Containers (images/README.md), as root on a machine without a container registry: a Docker engine
# (images/engine.sh: Debian's docker.io, started without iptables or a bridge), the CPU image built with
# images/build.sh --local, then the tests that run it (the `container` marker: entrypoint, user, serve,
# the tiny pipeline with --runner docker). Not part of `make test`, which needs no Docker.
image-local:
	images/engine.sh start
	images/build.sh --local

test-containers: setup image-local
	$(PY) -m pytest -m container $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache
