PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FEMNIST ?= ../shared/data/femnist
SWEEP ?= sweeps/digits.yaml
WORKERS ?= 1
MODEL ?= fedlight-digits-sweep@champion
EXPORT_DIR ?= exported
REPRO_WORKERS ?= 2

.PHONY: install run test bench lint ui sweep export reproduce clean

install: $(BIN)/fedlight

$(BIN)/fedlight: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

## The default job: FedAvg on scikit-learn's embedded digits (no download).
run: install
	$(BIN)/fedlight run --config configs/digits.yaml

test: install
	$(BIN)/pytest -q

## fedlight against a hand-written plain-PyTorch FedAvg (process wall and rounds only; LEAF CNN 20 rounds,
## small CNN 60; run on an idle machine) and the cost of DP-SGD; writes pipelines/results/bench/.
BENCH_REPEATS ?= 2
bench: install
	$(BIN)/python pipelines/bench.py --data-dir $(FEMNIST) --repeats $(BENCH_REPEATS)

lint: install
	$(BIN)/ruff check fedlight pipelines tests

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000

## An Optuna study (continues if it exists); WORKERS=2 runs two processes on it.
sweep: install
	@pids=""; for i in $$(seq $(WORKERS)); do \
	  $(BIN)/fedlight sweep --config $(SWEEP) & pids="$$pids $$!"; sleep 2; \
	done; status=0; for p in $$pids; do wait $$p || status=$$?; done; exit $$status

## The registry model MODEL (NAME@ALIAS or NAME/VERSION) as TorchScript in EXPORT_DIR.
export: install
	$(BIN)/fedlight export --model $(MODEL) --out $(EXPORT_DIR)

## Every paper pipeline in full (hours on 2 cores; see README).
reproduce: install
	$(BIN)/python pipelines/table.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)
	$(BIN)/python pipelines/convergence.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)
	$(BIN)/python pipelines/noisy_parties.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)
	$(BIN)/python pipelines/volume.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)
	$(BIN)/python pipelines/crossdomain.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)
	$(BIN)/python pipelines/privacy.py --data-dir $(FEMNIST) --workers $(REPRO_WORKERS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
