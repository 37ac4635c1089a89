# Two entry points: `make demo` (the main job) and `make test` (the suite). Both create .venv if no venv is active.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.nerfqat-installed
# Idle OpenMP threads sleep instead of spinning: up to 3x faster steps on a CPU that other processes share
# (README, "CPU notes"). Read by every Python process started from here; a value already set is kept.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint demo system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check nerfqat_plugin tests scripts docs
	$(BIN)/ruff format --check nerfqat_plugin tests scripts docs

# Chromium + chromedriver (browser test of the viewer) and ffmpeg (ns-render), from Debian when apt is there.
system-deps:
	@missing=""; for c in chromium chromedriver ffmpeg; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver ffmpeg) \
			>/dev/null || echo "could not install chromium/ffmpeg with apt-get: the tests that need them are skipped"; \
	fi

demo: install
	$(BIN)/python scripts/demo.py

test: lint system-deps
	$(BIN)/python -m pytest -q --durations=20 tests
