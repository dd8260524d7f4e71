# Two entry points for a fresh machine: `make train` and `make test`.
# Both create .venv on first use and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run train test test-fast bench bench-peers clean

# CPU torch first: a dependency asking for plain `torch` must find it satisfied, or pip
# pulls the multi-gigabyte CUDA build. Without an NVIDIA GPU, from PyTorch's CPU index
# (the default index's Linux wheel is the CUDA build, ~3.5 GB with its nvidia-* packages);
# where that index is unreachable, from the default index, saying so.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "installing PyTorch 2.13.0 (the CPU build where there is no nvidia-smi)"
	@if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet torch==2.13.0; \
	else $(BIN)/pip install --quiet --timeout 15 --retries 1 --index-url $(TORCH_CPU_INDEX) torch==2.13.0 2>/dev/null \
	  || { echo "PyTorch's CPU index ($(TORCH_CPU_INDEX)) is unreachable: torch comes from the default index"; \
	       $(BIN)/pip install --quiet torch==2.13.0; }; fi
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  # the main job: sweep -> final training on 2 Ray Train workers -> verified export -> report
	$(BIN)/trainyard run jobs/configs/addition.yaml --space tune_spaces/addition_small.yaml --samples 6 --workers 2 epochs=2

train: $(STAMP)  # one training run on 2 Ray Train workers
	$(BIN)/trainyard train jobs/configs/addition.yaml --workers 2

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15
	$(BIN)/python -m pytest -q -m cluster  # alone: it starts a Ray head and ends with `ray stop`

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not cluster"  # -m replaces the addopts one: keep the cluster test out

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/ray_train_overhead.py
	$(BIN)/python benchmarks/tune_overhead.py
	$(BIN)/python benchmarks/data_ingest.py

bench-peers: $(STAMP)  # about 20 minutes: trainyard against the HF Trainer, a stock TorchTrainer, stock Tune
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) .pytest_cache checkpoints runs
