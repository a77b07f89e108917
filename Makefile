# gradbench — `make help` lists the targets. Two commands do everything on a fresh machine:
#   make run    set up .venv, then the default training run
#   make test   set up .venv, then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help setup run test test-all clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install gradbench editable with its dev extra (only when needed)

# Re-installs only when pyproject.toml changes. torch is not pinned: pip takes the registry's
# newest torch + torchvision pair (a CUDA build, which also runs on CPU).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup ## the default training run: penguins, MLP, forward gradient, SGD (prints the run dir)
	$(BIN)/gradbench train

test: setup ## the test suite (slow tests excluded; `make test-all` runs them too)
	$(BIN)/python -m pytest -m "not slow"

test-all: setup ## every test, slow ones included
	$(BIN)/python -m pytest

clean: ## remove outputs/ (runs and reports); keeps .venv
	rm -rf outputs/runs outputs/multirun outputs/reports
