#!/usr/bin/env bash
# Everything a session with a lent GPU machine (the `device` tool) has to run, in one call:
#
#     bash benchmarks/gpu_session.sh          (on the device: `run` with this command)
#
# That machine has no package registry, so `make` cannot build its venv there: the image's own
# python3 (torch and Triton included) runs this checkout with PYTHONPATH=src. Everything it
# writes goes under $OUT, which the device tool brings back:
#   machine.txt     the card, driver, compiler and versions
#   test_gpu.txt    tests/test_gpu.py on the card (parity against torch and the reference,
#                   bit-exactness against the CPU kernel, memory, the sm_90 compile check)
#   ptx.txt         FMA and approximate-math counts in the PTX Triton compiled for the run
#   bench_gpu.txt   benchmarks/bench_gpu.py's table; BENCHMARKS.md with its section written
#                   (copy it over the repository's after reading it)
# Each part runs even if an earlier one failed, under a time limit that keeps the whole within
# the device tool's 10 minutes a call; the exit status is the first failure's.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/adamkit-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=src
export TRITON_CACHE_DIR="$OUT/triton-cache-scratch"
status=0
record() { local rc=$?; [ "$status" -eq 0 ] && status=$rc; return 0; }

(
    date -u
    nvidia-smi || exit 1
    cc --version | head -1 || exit 1
    python3 -c "import torch, triton, numpy, pytest; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__, \
torch.cuda.get_device_name())"
) > "$OUT/machine.txt" 2>&1
record

timeout 300 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py \
    > "$OUT/test_gpu.txt" 2>&1
record

ptx() { find "$TRITON_CACHE_DIR" -name '*.ptx' -exec cat {} + 2>/dev/null; }
files=$(find "$TRITON_CACHE_DIR" -name '*.ptx' 2>/dev/null | wc -l)
fma=$(ptx | grep -c 'fma\.rn\.f')
approximate=$(ptx | grep -cE '(sqrt|div|rcp)\.(approx|full)')
{
    echo "PTX files Triton compiled for the tests: $files"
    echo "fma.rn instructions (expected 0): $fma"
    echo "approximate sqrt/div/rcp (expected 0): $approximate"
    echo "vector loads: $(ptx | grep -cE 'ld\.global(\.[a-zA-Z0-9_:]+)*\.v[248]\.')"
} > "$OUT/ptx.txt" 2>&1
[ "$files" -gt 0 ] && [ "$fma" -eq 0 ] && [ "$approximate" -eq 0 ]
record

cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
timeout 240 python3 benchmarks/bench_gpu.py --out "$OUT/BENCHMARKS.md" > "$OUT/bench_gpu.txt" 2>&1
record

rm -rf "$TRITON_CACHE_DIR"  # compiled kernels: not worth bringing back
tail -3 "$OUT/test_gpu.txt"
tail -15 "$OUT/bench_gpu.txt"
exit "$status"
