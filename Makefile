# Entry points, each doing all of its own set-up on a fresh machine:
#   make demo   - create .venv if missing, install contrastkit, run the main job (`contrastkit train`:
#                 the built-in CLIP on generated shapes; the run lands in runs/)
#   make test   - create .venv if missing, install contrastkit[dev], run the whole test suite
#   make lint   - ruff (pinned in the dev extra) over src/, tests/, bench/ and experiments/
# torch is installed as $(TORCH); choose another build with TORCH and, where the wheel lives on
# PyTorch's own index rather than PyPI, TORCH_INDEX, e.g.
#   make test TORCH='torch==2.13.0+cu126' TORCH_INDEX=<PyTorch's cu126 wheel index URL>
# Changing either reinstalls torch on the next run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.contrastkit-installed
TORCH_SPEC := $(VENV)/.torch-spec

.PHONY: demo test lint clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "pip>=21.3"  # editable installs of a pyproject.toml (PEP 660)

# Rewritten only when TORCH or TORCH_INDEX changes, so only then does the stamp go stale.
$(TORCH_SPEC): FORCE | $(BIN)/python
	@echo '$(TORCH) $(TORCH_INDEX)' | cmp -s - $@ || echo '$(TORCH) $(TORCH_INDEX)' > $@

$(STAMP)-%: pyproject.toml Makefile $(TORCH_SPEC)
	$(BIN)/python -m pip install $(if $(TORCH_INDEX),--extra-index-url "$(TORCH_INDEX)") "$(TORCH)" -e ".[$*]"
	touch $@

demo: $(STAMP)-examples
	$(BIN)/contrastkit train

test: $(STAMP)-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)-dev
	$(BIN)/ruff check src tests bench experiments
	$(BIN)/ruff format --check src tests bench experiments

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist
