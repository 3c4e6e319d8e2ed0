# Two commands for a new user: `make demo` and `make test` (both install first).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench study clean

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

clean:
	rm -rf runs .pytest_cache
