# temseg-ablation developer commands. `make install` creates .venv with the CPU build of torch.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PROFILE ?= quick

.PHONY: install test test-fast lint clean preview

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	# torch first, pinned, so that nothing later pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"

test: install
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check temseg_ablation tests experiments

preview:
	$(BIN)/python -m temseg_ablation.preview --out experiments/preview/preview.png

clean:
	rm -rf $(VENV) outputs multirun mlruns .cache build *.egg-info .pytest_cache
