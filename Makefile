# temseg-ablation developer commands. `make install` creates .venv with the CPU build of torch.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PROFILE ?= quick
SEEDS ?= 10
TABLE1_PROFILE ?= table1
# `make reproduce-table1 PROFILE=...` (the older spelling) still picks the Table 1 profile
T1_PROFILE = $(if $(filter command line,$(origin PROFILE)),$(PROFILE),$(TABLE1_PROFILE))
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
UI_STORE ?= mlruns
UI_SHOT ?= docs/img/mlflow_ui.png
MLFLOW_PORT ?= 5000
PG_PORT ?= 5433
SERVER_DIR ?= .server

.PHONY: install test test-fast lint clean preview sweep reproduce-table1 ui ui-check magnification server server-stop server-status findings findings-thresholds findings-generalisation findings-interpretability findings-resolution bench bench-quick bench-sweep realbench realbench-selftrain

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	# torch first, pinned, so that nothing later pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast:
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# style, and the import contract (data -> models -> metrics -> training -> tracking -> app -> ...)
lint:
	$(BIN)/ruff check temseg_ablation tests experiments scripts notebooks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layering.py

preview:
	$(BIN)/python -m temseg_ablation.preview --out docs/img/preview.png

# The paper's fifteen UNet variants on the quick CPU profile, two jobs at a time.
sweep: install
	$(BIN)/python -m temseg_ablation -m 'model=glob(*)' hydra/launcher=parallel

# Table 1 as a measured table: converged arms on clean splits (TABLE1_PROFILE=table1 on CPU,
# =preview for a short labelled preview without verdicts, =paper on GPUs). Resumable: rerun it.
reproduce-table1: install
	$(BIN)/python -m temseg_ablation.report.reproduce_table1 --profile $(T1_PROFILE) --seeds $(SEEDS)

# Browse runs: MLflow UI on http://127.0.0.1:5000 over the default sqlite store.
ui:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000

# The MLflow UI in headless Chromium (installed from Debian if missing), screenshot saved.
ui-check: install
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(BIN)/python scripts/ui_check.py --store $(UI_STORE) --out $(UI_SHOT)

# Pseudo-labels at several magnifications: nm parameters vs fixed pixel parameters vs auto scale.
magnification: install
	$(BIN)/python experiments/magnification_table.py

# Team tracking server: MLflow on PostgreSQL ($(SERVER_DIR)/pg), artifacts proxied into
# $(SERVER_DIR)/artifacts, 127.0.0.1 only. Needs: apt-get install -y postgresql
server: install
	$(BIN)/python -m temseg_ablation.ops.server start --dir $(SERVER_DIR) --port $(MLFLOW_PORT) --pg-port $(PG_PORT)

server-stop:
	$(BIN)/python -m temseg_ablation.ops.server stop --dir $(SERVER_DIR)

server-status:
	$(BIN)/python -m temseg_ablation.ops.server status --dir $(SERVER_DIR)

FINDINGS_OUT ?= experiments/findings
# SWEEP: latest (newest sweep in the store), a sweep folder, or a sweep parent run id
SWEEP ?= latest
FINDINGS_JOBS ?= 2
FINDINGS_SHALLOW ?=
FINDINGS_SEEDS ?= 3

# The paper's other findings, one report each under $(FINDINGS_OUT) (PROFILE=quick on CPU).
findings-thresholds: install
	$(BIN)/python -m temseg_ablation.report.findings thresholds --sweep $(SWEEP) --out $(FINDINGS_OUT)

findings-generalisation: install
	$(BIN)/python -m temseg_ablation.report.findings generalisation --sweep $(SWEEP) --out $(FINDINGS_OUT)

findings-interpretability: install
	$(BIN)/python -m temseg_ablation.report.findings interpretability --profile $(PROFILE) \
	  --jobs $(FINDINGS_JOBS) --out $(FINDINGS_OUT) $(if $(FINDINGS_SHALLOW),--shallow-override $(FINDINGS_SHALLOW))

findings-resolution: install
	$(BIN)/python -m temseg_ablation.report.findings resolution --profile $(PROFILE) \
	  --seeds $(FINDINGS_SEEDS) --jobs $(FINDINGS_JOBS) --out $(FINDINGS_OUT)

findings: findings-thresholds findings-generalisation findings-interpretability findings-resolution

# Benchmarks: ratios measured side by side, table in experiments/bench/results.md
bench: install
	$(BIN)/python experiments/bench/run_all.py

bench-quick: install
	$(BIN)/python experiments/bench/run_all.py --quick

bench-sweep: install
	$(BIN)/python experiments/bench/run_all.py --only sweep --sweep

# Particle detection and scale estimate on real HAADF STEM frames vs human boxes.
# SWEEP=<parent run id | latest>: score that sweep's networks instead, logging final/real/* to each run
realbench: install
	$(BIN)/python -m temseg_ablation.report.realbench $(if $(SWEEP),--sweep $(SWEEP))

# Networks trained on the blob detector's labels of real frames (2 folds x SEEDS), each scored on
# the fold it did not see, beside its teacher -> experiments/realbench/results_selftrain.md
SELFTRAIN_SEEDS ?= 0,1
realbench-selftrain: install
	$(BIN)/python -m temseg_ablation.report.realbench_selftrain --seeds $(SELFTRAIN_SEEDS)

# GPU throughput per execution mode and sweep projections -> experiments/bench/gpu.md (needs CUDA torch)
bench-gpu:
	$(BIN)/python experiments/bench/gpu.py $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) outputs multirun mlruns .cache build *.egg-info .pytest_cache
