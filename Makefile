# Set-up is idempotent: `make demo` or `make test` on a fresh clone creates .venv,
# installs the CPU build of torch first (a plain `torch` requirement would pull a
# multi-GB CUDA build), then the package with its dev and torch extras and the CPU build of ONNX
# Runtime (`[cpu]`; on a GPU machine use `[dev,torch,gpu]` instead, never both).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench fixtures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev,torch,cpu]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash fixtures/demo.sh

# Tests run on every core, one test file per worker (module fixtures that export a model are
# built once), one math thread per worker so workers do not oversubscribe the cores. Files go
# to the workers in collection order, which tests/conftest.py makes longest first
# (--no-loadscope-reorder: xdist would otherwise start with the files that have most tests, and
# end with one worker running the longest file alone).
# `make test` (what CI runs) runs every test, ruff and mypy. `make test-fast` is the loop to run on
# every change: every test but those marked slow (exports of real model families, fresh virtual
# environments, a strict mypy run on a user's script, ...).
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST)
	$(BIN)/ruff check wnconvert tests fixtures benchmarks
	$(BIN)/mypy

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"
	$(BIN)/ruff check wnconvert tests fixtures benchmarks
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check wnconvert tests fixtures benchmarks
	$(BIN)/mypy

fixtures: $(STAMP)
	$(BIN)/python fixtures/make_fixtures.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,torch,cpu,bench]"
	$(BIN)/python benchmarks/bench_checkpoint_fold.py
	$(BIN)/python benchmarks/bench_onnx_fold.py
	$(BIN)/python benchmarks/bench_fold_to_onnx.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out
