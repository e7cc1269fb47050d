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
MUTMUT  := $(VENV)/.mutmut-3.8.1

.PHONY: test lint unit integration k8s bench mutation up test-cluster system-deps clean

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

# The slowest tests are listed at the end: the suite must stay well inside CI's budget.
test: $(STAMP) system-deps test-cluster lint
	$(BIN)/pytest --durations=20

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

k8s: $(STAMP) test-cluster
	$(BIN)/pytest tests/k8s

# Mutation testing of policies/ against the unit tests (settings: setup.cfg). Not part of
# `make test`: it takes 40-50 minutes on 2 cores, niced. The result is docs/mutation.md.
$(MUTMUT): $(STAMP)
	$(PIP) 'mutmut==3.8.1'
	touch $@

mutation: $(MUTMUT)
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	$(BIN)/mutmut results

bench: $(STAMP) system-deps test-cluster
	$(BIN)/python -m loadtests.bench --out docs/benchmarks.md

up: $(RUNTIME)
	$(BIN)/sluice up -f examples/local.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
