# mskd — one command per use case. `make demo` and `make test` set everything up first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
MLFLOW_PORT ?= 5000
MLFLOW_STORE ?= $(DEMO_DIR)/output/mlruns.db

# glibc malloc tuning: up to ~2.8x faster CPU training (DESIGN §7).
export MALLOC_MMAP_THRESHOLD_ := 17179869184
export MALLOC_TRIM_THRESHOLD_ := 17179869184
# OpenMP threads that sleep while they wait: spinning ones made a step 3-6x slower on a busy machine
# (docs/performance.md, "Threads").
export OMP_WAIT_POLICY ?= PASSIVE

REAL_CT ?= ../shared/data/real/totalsegmentator/ct_3mm

.PHONY: install demo test browser lint bench gpu-check figures mlflow-ui clean

install: $(STAMP)

# Re-runs only when the set-up files change. torch is installed first so that the pin
# resolves to the local CPU build instead of pulling a CUDA build through another package.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/mskd demo --workdir $(DEMO_DIR)

test: install browser
	$(BIN)/python -m pytest -q tests

# Debian's Chromium renders the MLflow dashboard in tests/test_dashboard.py (installed only when missing).
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq >/dev/null && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# Performance benchmarks (not run by CI): results go to docs/.
bench: install
	$(BIN)/python benchmarks/networks.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/training_step.py
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/teacher_cache.py
	$(BIN)/python benchmarks/threads.py

# On one CUDA device, <= 8 minutes (not run by CI): every stack of both bundles with AMP (fp16, bf16), channels_last
# and compile; GPU images/s and peak memory; CPU-vs-GPU losses; torchrun/nccl when >= 2 GPUs are visible. Results go
# to docs/benchmarks/gpu_check.json and docs/performance.md ("GPU check"); exits 2 without a CUDA device.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

# Figures in docs/ that are generated from code and data (the real CT sample lives outside the repository).
figures: install
	$(BIN)/python tools/phantom_vs_real.py --out docs/figures/phantom_vs_real.png \
		--real-image $(REAL_CT)/example_ct.nii.gz --real-label $(REAL_CT)/example_ct_seg_btcv13.nii.gz

# The MLflow dashboard of a store (default: the demo's) at http://127.0.0.1:$(MLFLOW_PORT), with the address of each
# experiment's runs table printed first (`mskd ui`); any other store with
# MLFLOW_STORE=bundles/mskd_synapse/output/mlruns.db. tests/test_dashboard.py opens it in a headless Chromium.
mlflow-ui: install
	$(BIN)/mskd ui --store $(abspath $(MLFLOW_STORE)) --port $(MLFLOW_PORT)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache src/*.egg-info bundles/*/output bundles/*/models/*.pt
