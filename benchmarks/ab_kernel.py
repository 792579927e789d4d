"""Two versions of the C kernel, timed against each other in one process.

On a shared 2-core machine two runs of the same benchmark differ by 5-10%; a change to the
kernel worth a few percent needs a better comparison. This builds ``fused_cpu.c`` as it is at a
git revision (A) and as it is in the working tree (B), with the flags the package uses, loads
both, and steps one optimizer with each in turn (the same tensors, the same state), so drift
and neighbours' load hit both alike. Prints the median step time of each and B/A.

    python benchmarks/ab_kernel.py --base HEAD --variants bf16,8bit,pure

Variants, on case (b) of bench_step.py (7x(1024, 4096) + 293x(1024,), Adam): ``fp32``,
``bf16`` (bf16 state), ``8bit``, ``pure`` (bf16 parameters rounded stochastically, bf16 state),
``stable`` (StableAdamW: update clipping's two passes), ``cautious`` (AdamW, cautious=True).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import adamkit
from adamkit.kernels import _build
from adamkit.optim import _fused, _scalars

SOURCE = Path(adamkit.__file__).parent / "kernels" / "fused_cpu.c"
SHAPES = [(1024, 4096)] * 7 + [(1024,)] * 293


def build(source: str, folder: Path, name: str) -> ctypes.CDLL:
    path = folder / f"{name}.c"
    path.write_text(source)
    library = folder / f"{name}.so"
    subprocess.run(["gcc", *_build.flags(), "-o", str(library), str(path)], check=True)
    loaded = ctypes.CDLL(str(library))
    _build._declare(loaded)
    return loaded


def optimizer(variant: str) -> torch.optim.Optimizer:
    dtype = torch.bfloat16 if variant == "pure" else torch.float32
    params = [torch.randn(s).to(dtype).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape).to(dtype)
    if variant == "stable":  # update clipping: the fused options' two passes
        return adamkit.StableAdamW(params, lr=1e-3)
    if variant == "cautious":
        return adamkit.AdamW(params, lr=1e-3, cautious=True)
    precision = {"fp32": "fp32", "8bit": "8bit"}.get(variant, "bf16")
    return adamkit.Adam(
        params, lr=1e-3, state_precision=precision, stochastic_rounding=variant == "pure"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of version A")
    parser.add_argument("--variants", default="fp32,bf16,8bit,pure")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    root = SOURCE.parents[3]
    relative = SOURCE.relative_to(root)
    base = subprocess.run(
        ["git", "show", f"{args.base}:{relative}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory() as folder:
        libraries = [build(base, Path(folder), "a"), build(SOURCE.read_text(), Path(folder), "b")]
        current = [libraries[0]]
        # Every plan asks for the library at each step: point that at the version being timed.
        for module in (_fused, _scalars):
            vars(module)["fused_library"] = lambda: current[0]
        print(f"A: {args.base}, B: the working tree; {torch.get_num_threads()} threads")
        for variant in args.variants.split(","):
            opt = optimizer(variant)
            for library in libraries:
                current[0] = library
                for _ in range(3):
                    opt.step()
            times: list[list[float]] = [[], []]
            for _ in range(args.reps):
                for i, library in enumerate(libraries):
                    current[0] = library
                    start = time.perf_counter()
                    for _ in range(4):
                        opt.step()
                    times[i].append((time.perf_counter() - start) / 4 * 1e3)
            a, b = map(statistics.median, times)
            print(f"{variant:5s} A {a:6.2f} ms  B {b:6.2f} ms  B/A {b / a:.3f}", flush=True)


if __name__ == "__main__":
    main()
