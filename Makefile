# sluice: `make up` runs the local stack, `make test` sets up and runs every test.
# Both install what they need on a fresh machine and do nothing more when it is there.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
HASH    := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
RUNTIME := $(VENV)/.runtime-$(HASH)
STAMP   := $(VENV)/.installed-$(HASH)
# Errors only: setuptools' notes on editable installs are not news at every install.
PIP     := $(BIN)/pip install -qq --disable-pip-version-check

.PHONY: test lint unit integration k8s bench up test-cluster system-deps clean

# What running needs: `make up`.
$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	rm -f $(VENV)/.runtime-* && touch $@

# And the tools to develop and test it: every other target.
$(STAMP): $(RUNTIME)
	$(PIP) -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

system-deps:
	bash .ci/system-deps

test-cluster:  # kube-apiserver, etcd, scheduler, controller-manager, kwok: built once, cached
	bash tests/k8s/build-control-plane.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) system-deps test-cluster lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

k8s: $(STAMP) test-cluster
	$(BIN)/pytest tests/k8s

bench: $(STAMP) system-deps test-cluster
	$(BIN)/python -m loadtests.bench --out docs/benchmarks.md

up: $(RUNTIME)
	$(BIN)/sluice up -f examples/local.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
