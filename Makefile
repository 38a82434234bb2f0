PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FEMNIST ?= ../shared/data/femnist

.PHONY: install run test bench lint ui clean

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

## fedlight's FedAvg against a plain-PyTorch FedAvg doing the same work.
bench: install
	$(BIN)/python pipelines/bench.py --data-dir $(FEMNIST)

lint: install
	$(BIN)/ruff check fedlight pipelines tests

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
