# physics_tf — common tasks. `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export WANDB_MODE ?= offline
export MPLBACKEND ?= Agg

.PHONY: install demo generate train test test-all bench clean slurm-packages

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

## Debian's SLURM + munge, for tests/test_slurm.py's localhost cluster (only as root with apt-get; else a warning).
slurm-packages:
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "warning: slurm-packages needs root and apt-get; tests/test_slurm.py will skip"; \
	elif command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
		&& command -v munged >/dev/null; then \
		echo "SLURM packages already installed"; \
	else \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null \
		 || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null)) \
		|| echo "warning: apt-get install slurmctld slurmd slurm-client munge failed; tests/test_slurm.py will skip"; \
	fi

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf logs outputs multirun .pytest_cache
