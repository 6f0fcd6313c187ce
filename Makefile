# Quick start (fresh machine with Python >= 3.10):
#   make train   # create .venv, install ff-lightning, train on the embedded dataset
#   make test    # install the dev extras and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision are installed first, pinned, so pip does not pick another build later.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PIP    := $(BIN)/python -m pip
ARGS   ?=

.PHONY: train test benchmark benchmark-augment gpu-check gpu-wheels plan lint format clean install install-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[recipes]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

train: $(VENV)/.installed
	$(BIN)/python recipes/train.py $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q $(ARGS)

benchmark: $(VENV)/.installed
	$(BIN)/python recipes/benchmark.py $(ARGS)

plan: $(VENV)/.installed
	$(BIN)/python recipes/plan.py $(ARGS)

benchmark-augment: $(VENV)/.installed
	$(BIN)/python recipes/benchmark_augment.py $(ARGS)

# The GPU machine starts bare (python3 with torch, no hydra/kornia, no network): run
# `make gpu-wheels` beforehand where the package index is reachable, then `make gpu-check` there.
gpu-check:
	bash recipes/gpu_check.sh $(ARGS)

gpu-wheels:
	bash recipes/gpu_wheels.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ff_lightning tests recipes
	$(BIN)/ruff format --check ff_lightning tests recipes

format: $(VENV)/.installed-dev
	$(BIN)/ruff format ff_lightning tests recipes
	$(BIN)/ruff check --fix ff_lightning tests recipes

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
