# Two commands on a fresh machine: `make demo` (set up, then run the seed tour) and
# `make test` (set up, then lint, type-check and run the whole test suite).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where pip finds torch. Empty: pip's own configuration, which on these machines finds the CPU
# build kept on disk. On an ordinary Linux x86_64 machine PyPI's torch is the CUDA build (several
# GB); for the CPU build there, run e.g. `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
TORCH_SOURCE := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# --no-compile: Python writes the bytecode of what it imports on first use, instead of pip
# writing it for every module of torch up front (170 MB of the demo's venv).
PIP := $(BIN)/python -m pip install --quiet --progress-bar off --no-compile
# What `make demo` needs (torch, numpy, matplotlib), and on top of it what `make test` needs.
BASE := $(VENV)/.adamkit-base
STAMP := $(VENV)/.adamkit-installed

.PHONY: demo test lint pytest bench bench-gpu clean

# torch first: adamkit's own requirement (torch>=2.4) is then already met, and pip never reaches
# for another build.
$(BASE): pyproject.toml
	@echo "==> [1/3] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] torch 2.13.0 $(if $(TORCH_INDEX),from $(TORCH_INDEX),(pip's configured index))"
	$(PIP) "torch==2.13.0" $(TORCH_SOURCE)
	@echo "==> [3/3] adamkit and what the tour needs (numpy, matplotlib)"
	$(PIP) -e .
	touch $(BASE)

# The Triton that torch 2.13 pins (its CUDA builds ship it); here it runs the GPU kernel's tests
# in its interpreter. Only Linux x86_64 has wheels; elsewhere those tests skip.
$(STAMP): $(BASE)
	@echo "==> test tools: the [dev] extra (pytest, ruff, mypy, Lightning, transformers, ...)"
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then $(PIP) "triton==3.7.1"; fi
	$(PIP) -e ".[dev]"
	touch $(STAMP)

demo: $(BASE)
	$(BIN)/adamkit tour --out adamkit-tour

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks conformance
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15

test: lint pytest

# Step time of every algorithm against torch (for-loop, foreach, fused) and a C bandwidth
# ceiling, interleaved, medians; writes its section of BENCHMARKS.md. About 7 minutes, 2 cores;
# run it on an otherwise idle machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py --out BENCHMARKS.md

# The same against torch on a CUDA GPU (1B parameters; needs about 45 GB of GPU memory);
# writes its section of BENCHMARKS.md with the card's name.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) adamkit-tour .pytest_cache .mypy_cache .ruff_cache
