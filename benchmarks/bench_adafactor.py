"""adamkit's Adafactor against torch.optim.Adafactor: step time and the memory a step takes.

    python benchmarks/bench_adafactor.py [--reps 7] [--md BENCHMARKS.md]

The default path's C kernel steps the matrices (three passes over memory), the multi-tensor
ops the vectors; the foreach and for-loop paths take torch's operations throughout. Four
parameter sets: case (b) of bench_step.py (7x(1024, 4096) + 293x(1024,), 29.66M
elements), a transformer-shaped one (the same shapes as bench_step.py's), an embedding
table whose rows mostly get no gradient (the rows where Adafactor's eps1 floor binds), and a
convolution's kernels (batches of 3 x 3 matrices). Times:
one step per optimizer in turn (interleaved), median of the reps; ratio = torch's default step
(its for-loop) / this one (> 1 is faster). Memory: each optimizer in a fresh process, what two
steps add to the peak resident memory: the state (about 1.3 MiB on case (b)) and the
temporaries, from the process's high-water mark (``VmHWM``), with glibc's mmap threshold fixed so
that freed blocks are returned.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_step import machine_description, write_section

import adamkit

SETS = {
    "(b) 7x(1024,4096) + 293x(1024,)": [(1024, 4096)] * 7 + [(1024,)] * 293,
    "transformer 12x(768,3072),(3072,768),4x(768,768) + vectors": (
        [(768, 3072), (3072, 768), *[(768, 768)] * 4, *[(768,)] * 8, (3072,)] * 12
    ),
    # The rows of tokens a batch does not contain get no gradient: there the eps1 floor binds
    # and those rows take torch's estimate (the first steps: every unseen row is zero).
    "embedding (50000,512), 90% of rows without gradient": [(50000, 512)],
    # A convolution's kernels are factored over their last two dimensions: batches of 3 x 3
    # matrices, each a tile of the kernel's own.
    "conv kernels 4x(512,512,3,3) + 4x(256,256,3,3)": [(512, 512, 3, 3)] * 4
    + [(256, 256, 3, 3)] * 4,
}
#: The fraction of each set's matrices' rows whose gradient is zero.
ZERO_ROWS = {"embedding (50000,512), 90% of rows without gradient": 0.9}
VARIANTS = {
    "torch Adafactor (default: for-loop)": (torch.optim.Adafactor, {}),
    "torch Adafactor, foreach": (torch.optim.Adafactor, {"foreach": True}),
    "adamkit Adafactor (default: fused)": (adamkit.Adafactor, {}),
    "adamkit Adafactor, foreach": (adamkit.Adafactor, {"foreach": True}),
    "adamkit Adafactor, for-loop": (adamkit.Adafactor, {"foreach": False}),
}


def params(shapes: list[tuple[int, ...]], zero_rows: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    for p in out:
        p.grad = torch.randn(p.shape, generator=g)
        if zero_rows and p.dim() > 1:
            p.grad[torch.rand(p.shape[0], generator=g) < zero_rows] = 0
    return out


def high_water() -> int:
    """This process's peak resident memory in bytes (``VmHWM``: getrusage's ``ru_maxrss``
    starts a child at its parent's peak, so it cannot see a child's smaller one)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _memory(set_name: str, variant: str) -> float:
    """MiB two steps add to the peak resident memory (a fresh process): the state and the
    largest set of temporaries alive at once."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks');"
        "import bench_adafactor as b;"
        f"ps = b.params(b.SETS[{set_name!r}], b.ZERO_ROWS.get({set_name!r}, 0.0));"
        f"cls, kw = b.VARIANTS[{variant!r}];"
        "opt = cls(ps, **kw); before = b.high_water();"
        "opt.step(); opt.step();"
        "print(json.dumps((b.high_water() - before) / 2**20))"
    )
    root = Path(__file__).resolve().parents[1]
    # A fixed mmap threshold: every large block is mapped when allocated and unmapped when
    # freed, so the high-water mark follows what is live (glibc's adaptive threshold would
    # keep freed blocks mapped, and a later step reuse them unseen).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=env, check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--md", type=Path, help="markdown file whose section to replace")
    args = parser.parse_args()
    command = "python benchmarks/bench_adafactor.py " + " ".join(sys.argv[1:])
    lines = [
        "## Adafactor against torch's (`benchmarks/bench_adafactor.py`)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        *(f"{line}  " for line in machine_description()),
        "",
    ]
    for set_name, shapes in SETS.items():
        elements = sum(torch.Size(s).numel() for s in shapes)
        zero = ZERO_ROWS.get(set_name, 0.0)
        runs = {name: cls(params(shapes, zero), **kw) for name, (cls, kw) in VARIANTS.items()}
        for opt in runs.values():
            opt.step()  # state created, caches warm
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, opt in runs.items():
                start = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - start)
        del runs
        base = statistics.median(times["torch Adafactor (default: for-loop)"])
        lines += [
            f"**{set_name}**: {elements / 1e6:.2f}M elements, median of {args.reps} interleaved "
            "steps; memory: the peak resident memory two steps add (state and temporaries; "
            "a fresh process each)",
            "",
            "| optimizer | ms/step | vs torch default | peak memory two steps add, MiB |",
            "|---|---|---|---|",
        ]
        for name in VARIANTS:
            ms = statistics.median(times[name]) * 1e3
            memory = _memory(set_name, name)
            lines.append(f"| {name} | {ms:.1f} | {base * 1e3 / ms:.2f}x | {memory:.0f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.md:
        write_section(args.md, text, "bench_adafactor")


if __name__ == "__main__":
    main()
