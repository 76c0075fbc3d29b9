# physics_tf — common tasks. `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export WANDB_MODE ?= offline
export MPLBACKEND ?= Agg

.PHONY: install demo generate train test test-all bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU wheel; the project itself keeps torch>=2.3 so CUDA builds work on clusters.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,gen]"
	touch $@

install: $(VENV)/.installed

## Generate the demo jets (Pythia 8 + FastJet), train the small ParT demo, test it and print the metrics.
demo: install
	$(BIN)/python pipelines/generate.py gen=jets_demo
	$(BIN)/python pipelines/train.py experiment=jets_demo

generate: install
	$(BIN)/python pipelines/generate.py gen=jets_demo

## The test suite (slow tests deselected; `make test-all` runs them too).
test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf logs outputs multirun .pytest_cache
