# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   - create .venv if missing, install contrastkit, run the main job
#   make test   - create .venv if missing, install contrastkit[dev], run the whole test suite
#   make lint   - ruff (pinned in the dev extra) over src/ and tests/
# A user with a GPU passes a CUDA build of torch: make test TORCH='torch==2.13.0+cu126'
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.contrastkit-installed

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)"

# Reinstall when the package metadata or the torch spec changes.
$(STAMP)-%: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)" -e ".[$*]"
	touch $@

demo: $(STAMP)-examples
	$(BIN)/python -m contrastkit.examples.losses

test: $(STAMP)-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist
