# Two commands on a fresh machine: `make demo` (set up, then run the seed tour) and
# `make test` (set up, then lint, type-check and run the whole test suite).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adamkit-installed

.PHONY: demo test lint pytest bench bench-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build this machine kind keeps on disk: adamkit's own
	# requirement (torch>=2.4) is then already met and pip never fetches a multi-GB CUDA wheel.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	# The Triton that torch 2.13 pins (its CUDA builds ship it); here it runs the GPU kernel's
	# tests in its interpreter. Only Linux x86_64 has wheels; elsewhere those tests skip.
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then $(BIN)/python -m pip install --quiet "triton==3.7.1"; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adamkit tour --out adamkit-tour

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

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
