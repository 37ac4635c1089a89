# Two entry points: `make demo` (the main job) and `make test` (the suite). Both create .venv if no venv is active.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.nerfqat-installed

.PHONY: install test lint demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check nerfqat_plugin tests scripts
	$(BIN)/ruff format --check nerfqat_plugin tests scripts

test: lint
	$(BIN)/python -m pytest -q tests
