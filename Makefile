# Two entry points for a fresh machine: `make train` and `make test`.
# Both create .venv on first use and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast bench bench-peers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first: a dependency asking for plain `torch` must find it satisfied,
	# or pip pulls the multi-gigabyte CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/trainyard train jobs/configs/addition.yaml --workers 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/ray_train_overhead.py
	$(BIN)/python benchmarks/tune_overhead.py

bench-peers: $(STAMP)  # about 20 minutes: trainyard against the HF Trainer, a stock TorchTrainer, stock Tune
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) .pytest_cache checkpoints runs
