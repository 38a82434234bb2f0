PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FEMNIST ?= ../shared/data/femnist
SWEEP ?= sweeps/digits.yaml
WORKERS ?= 1
MODEL ?= fedlight-digits-sweep@champion
EXPORT_DIR ?= exported
EXPORT_FORMAT ?= all
REPRO_WORKERS ?= 2
SERVER_PORT ?= 5001
SERVER_STORE ?= mlruns/server

.PHONY: install run test bench lint ui server sweep export reproduce clean

install: $(BIN)/fedlight

$(BIN)/fedlight: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

## The default job: FedAvg on scikit-learn's embedded digits (no download).
run: install
	$(BIN)/fedlight run --config configs/digits.yaml

## The whole suite on TEST_WORKERS processes (pytest-xdist; a file's tests stay in one, in order).
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

## fedlight against a hand-written plain-PyTorch FedAvg and Flower 1.42's simulation (process wall and rounds
## only; LEAF CNN 20 rounds, small CNN 60), its sequential executor against Ray (2 workers) at 10 and 50 clients
## per round, and the cost of DP-SGD; run on an idle machine; writes pipelines/results/bench/.
## BENCH_PARTS: any of handwritten,flower,ray,dp (flower needs the extra: pip install -e '.[flower]').
BENCH_REPEATS ?= 2
BENCH_PARTS ?= handwritten,flower,ray,dp
bench: install
	$(BIN)/python pipelines/bench.py --data-dir $(FEMNIST) --repeats $(BENCH_REPEATS) --parts $(BENCH_PARTS)

lint: install
	$(BIN)/ruff check fedlight pipelines tests

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000

## An MLflow tracking server on 127.0.0.1:SERVER_PORT (SQLite and artifacts in SERVER_STORE) for runs, sweep
## workers and register/export/predict given --tracking-uri http://127.0.0.1:SERVER_PORT; no GenAI job runner.
server: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --host 127.0.0.1 --port $(SERVER_PORT) \
	  --backend-store-uri sqlite:///$(SERVER_STORE)/mlflow.db --artifacts-destination $(abspath $(SERVER_STORE))/artifacts \
	  --serve-artifacts

## An Optuna study (continues if it exists); WORKERS=2 runs two processes on it.
sweep: install
	@pids=""; for i in $$(seq $(WORKERS)); do \
	  $(BIN)/fedlight sweep --config $(SWEEP) & pids="$$pids $$!"; sleep 2; \
	done; status=0; for p in $$pids; do wait $$p || status=$$?; done; exit $$status

## The registry model MODEL (NAME@ALIAS or NAME/VERSION) in EXPORT_DIR: EXPORT_FORMAT pt2, onnx, torchscript or all.
export: install
	$(BIN)/fedlight export --model $(MODEL) --out $(EXPORT_DIR) --format $(EXPORT_FORMAT)

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
