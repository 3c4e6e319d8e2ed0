# Two commands for a new user: `make demo` and `make test` (both install first).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench study repro-cpu repro-plan clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; torch/torchvision come pinned from pyproject.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/ssl-norms fit --config configs/demo.yaml

test: install
	$(BIN)/pytest

test-slow: install
	$(BIN)/pytest -m slow

# ssl-norms against the compute-only limit and lightly (the `bench` extra), ratios per goal (~10 min)
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/compare_peers.py

# 5 methods x (default, cut-init, GradScale) on the demo data: loss, norm and k-NN table (~5-10 min)
study: install
	$(BIN)/python benchmarks/short_runs.py

# Issue 16's CPU-scale study on real CIFAR-10 (not CI; ~2 h on 2 cores; resumable: run it again after
# an interruption). Needs the data root ($$SSL_NORMS_DATA). Writes benchmarks/cpu_scale/{REPRODUCTION.md,results.json,*.png}.
REPRO_RUNS ?= runs
REPRO_JOBS ?= 2
repro-plan: install
	$(BIN)/python -m ssl_norms.repro plan --runs $(REPRO_RUNS) --jobs $(REPRO_JOBS)

# the report also follows a run with failed points (they show as "not run"); make still fails then
repro-cpu: install
	$(BIN)/python -m ssl_norms.repro run --runs $(REPRO_RUNS) --jobs $(REPRO_JOBS); status=$$?; \
	$(BIN)/python -m ssl_norms.repro report --runs $(REPRO_RUNS) --out benchmarks/cpu_scale && exit $$status

clean:
	rm -rf runs .pytest_cache
