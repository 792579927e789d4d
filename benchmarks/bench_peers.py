"""adamkit's newer algorithms against the peer package that ships them, on case (b).

    python benchmarks/bench_peers.py [--reps 7]

Case (b) of bench_step.py (7x(1024, 4096) + 293x(1024,), 29.66M elements), one step per
optimizer in turn (interleaved), median of the reps; ratio = the peer's time / ours (> 1 is
faster; each against its own peer). GB/s counts the bytes the step must move: AdEMAMix reads
p, g and three states and writes p and three states (36 bytes an element in fp32), ADOPT,
schedule-free AdamW (y, z, v) and StableAdamW two states (28). The schedulefree package divides
``p.grad`` in place each step (its gradients here shrink step by step; the timing is its own
design's). Cautious AdamW and StableAdamW take the fused kernel's two passes by default
(pass 1: moments, update and per-chunk sums; pass 2: the masked or scaled update), listed with
their multi-tensor step and plain fused AdamW's for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_step import machine_description

import adamkit

SHAPES = [(1024, 4096)] * 7 + [(1024,)] * 293
ELEMENTS = sum(a * b for a, b in SHAPES[:7]) + 1024 * 293


def params() -> list[torch.Tensor]:
    out = [torch.randn(s).requires_grad_() for s in SHAPES]
    for p in out:
        p.grad = torch.randn(p.shape)
    return out


def _train_mode(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    opt.train()  # type: ignore[attr-defined]  # the schedulefree package starts in eval mode
    return opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    import pytorch_optimizer
    import schedulefree

    torch.manual_seed(0)
    warm = {"t_alpha": 1000, "t_beta3": 1000}
    runs: dict[str, tuple[torch.optim.Optimizer, float]] = {
        "pytorch-optimizer AdEMAMix (foreach)": (
            pytorch_optimizer.AdEMAMix(params(), lr=1e-3, t_alpha_beta3=1000),
            36.0,
        ),
        "adamkit AdEMAMix, default (fused)": (adamkit.AdEMAMix(params(), lr=1e-3, **warm), 36.0),
        "adamkit AdEMAMix, foreach": (
            adamkit.AdEMAMix(params(), lr=1e-3, foreach=True, **warm),
            36.0,
        ),
        "adamkit AdEMAMix, bf16 state": (
            adamkit.AdEMAMix(params(), lr=1e-3, state_precision="bf16", **warm),
            24.0,
        ),
        "pytorch-optimizer ADOPT (foreach)": (pytorch_optimizer.ADOPT(params(), lr=1e-3), 28.0),
        "adamkit ADOPT, default (fused)": (adamkit.ADOPT(params(), lr=1e-3), 28.0),
        "adamkit ADOPT, foreach": (adamkit.ADOPT(params(), lr=1e-3, foreach=True), 28.0),
        "schedulefree AdamWScheduleFree (foreach)": (
            _train_mode(schedulefree.AdamWScheduleFree(params(), lr=1e-3, warmup_steps=10)),
            28.0,
        ),
        "adamkit ScheduleFreeAdamW, default (fused)": (
            adamkit.ScheduleFreeAdamW(params(), lr=1e-3, warmup_steps=10),
            28.0,
        ),
        "adamkit ScheduleFreeAdamW, foreach": (
            adamkit.ScheduleFreeAdamW(params(), lr=1e-3, warmup_steps=10, foreach=True),
            28.0,
        ),
        "pytorch-optimizer StableAdamW (foreach)": (
            pytorch_optimizer.StableAdamW(params(), lr=1e-3, kahan_sum=False),
            28.0,
        ),
        "adamkit StableAdamW, default (fused: two passes)": (
            adamkit.StableAdamW(params(), lr=1e-3),
            28.0,
        ),
        "adamkit StableAdamW, foreach": (
            adamkit.StableAdamW(params(), lr=1e-3, foreach=True),
            28.0,
        ),
        "adamkit AdamW, cautious, default (fused: two passes)": (
            adamkit.AdamW(params(), lr=1e-3, cautious=True),
            28.0,
        ),
        "adamkit AdamW, cautious, foreach": (
            adamkit.AdamW(params(), lr=1e-3, cautious=True, foreach=True),
            28.0,
        ),
        "adamkit AdamW, default (fused, for scale)": (adamkit.AdamW(params(), lr=1e-3), 28.0),
        "torch Adam, fused (for scale)": (torch.optim.Adam(params(), lr=1e-3, fused=True), 28.0),
    }
    for opt, _ in runs.values():
        for _ in range(2):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, (opt, _) in runs.items():
            start = time.perf_counter()
            for _ in range(3):
                opt.step()
            times[name].append((time.perf_counter() - start) / 3)
    peers = {"AdEMAMix": statistics.median(times["pytorch-optimizer AdEMAMix (foreach)"])}
    peers["ADOPT"] = statistics.median(times["pytorch-optimizer ADOPT (foreach)"])
    peers["ScheduleFree"] = statistics.median(times["schedulefree AdamWScheduleFree (foreach)"])
    peers["StableAdamW"] = statistics.median(times["pytorch-optimizer StableAdamW (foreach)"])
    print("\n".join(f"- {line}" for line in machine_description()))
    print(f"\nCase (b), {ELEMENTS:,} elements, median of {args.reps} interleaved reps.\n")
    print("| optimizer | ms/step | vs the peer | bytes/elem | GB/s |")
    print("|---|---|---|---|---|")
    for name, (_, nbytes) in runs.items():
        seconds = statistics.median(times[name])
        gbs = nbytes * ELEMENTS / seconds / 1e9
        peer = next((t for algo, t in peers.items() if algo in name), None)
        versus = f"{peer / seconds:.2f}x" if peer else "-"
        print(f"| {name} | {seconds * 1e3:.2f} | {versus} | {nbytes:g} | {gbs:.1f} |")


if __name__ == "__main__":
    main()
