"""Step time and state memory of low-precision optimizer state, against torch's fused fp32 Adam.

What it measures
----------------
On case (b) of ``bench_step.py`` (the transformer-like set: 7 matrices of 1024 x 4096 and 293
vectors of 1024, 29.7M fp32 parameters with random gradients kept between steps), for Adam and
AdamW (``--algorithms`` for others), each of these owns a copy of the parameters and an
optimizer, and they are timed in turn exactly as in ``bench_step.py`` (3 warm-up steps, K steps
of about 0.2 s per sample, ``--reps`` interleaved reps starting one further along each rep,
the median per-step time):

* ``torch fused fp32``: ``torch.optim.<Alg>(fused=True)``, the baseline of every ratio;
* ``adamkit fp32``, ``adamkit bf16``, ``adamkit 8bit``: ``adamkit.<Alg>(fused=True,
  state_precision=...)``;
* ``torch fused, bf16 params`` and ``adamkit bf16 params + SR``: pure-bf16 training (bf16
  parameters and gradients; torch keeps bf16 state, adamkit here bf16 state with
  ``stochastic_rounding=True``), for reference: these move fewer bytes than the baseline.

To tell memory from arithmetic, the same variants are then timed on one tensor of 65,536
elements, whose parameters, gradients and state stay in the cores' L2 caches, and on one of 16
elements (per-step overhead); ``(t_65536 - t_16) / 65,536`` is the time per element when memory
is free: the compute cost of the update and its codecs. A step over the big case cannot beat
its variant's compute time, so this bounds the speedup any memory saving can buy here.

For each it reports the optimizer state memory from :func:`adamkit.state_memory` (bytes per
parameter, after the warm-up steps), the bytes each step reads and writes per element, and the
achieved GB/s. Targets (issue "memory-lean state"): bf16 <= 4.0 bytes/param and >= 1.3x
torch fused fp32; 8bit <= 2.1 bytes/param and >= 1.0x.

Usage: ``python benchmarks/bench_precision.py [--quick] [--reps N] [--algorithms Adam,AdamW]
[--out BENCHMARKS.md]``. ``--quick`` uses bench_step's small case (b) and short samples: it
checks the harness, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import adamkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import (  # the sibling benchmark's harness
    ALGORITHMS,
    DEFAULT_REPS,
    QUICK_REPS,
    QUICK_TARGET_SECONDS,
    TARGET_SECONDS,
    Algorithm,
    Case,
    Contender,
    busy_warning,
    fmt,
    log,
    machine_description,
    make_cases,
    make_params,
    run_interleaved,
    table,
    warm_up,
    write_section,
)

BASELINE = "torch fused fp32"
BLOCK_SCALE_BYTES = 4 / 256  # one fp32 scale per 256 elements, read and written


@dataclass(frozen=True)
class Variant:
    """One optimizer configuration: its library, settings and the bytes a step moves."""

    name: str
    library: str
    settings: dict[str, object]
    param_dtype: torch.dtype
    bytes_per_element: float  # read + written per parameter element in one step
    target: str = ""


def _variants() -> list[Variant]:
    fp32 = 28.0  # p r/w 8, g 4, m r/w 8, v r/w 8
    eight = 8 + 4 + 4 + 2 * BLOCK_SCALE_BYTES * 2  # codes r/w 1+1 each, scales r/w
    return [
        Variant(BASELINE, "torch", {"fused": True}, torch.float32, fp32),
        Variant("adamkit fp32", "adamkit", {"fused": True}, torch.float32, fp32),
        Variant(
            "adamkit bf16",
            "adamkit",
            {"fused": True, "state_precision": "bf16"},
            torch.float32,
            20.0,
            ">= 1.25x (issue 19), <= 4.0 B/param",
        ),
        Variant(
            "adamkit 8bit",
            "adamkit",
            {"fused": True, "state_precision": "8bit"},
            torch.float32,
            eight,
            ">= 1.35x (issue 19), <= 2.1 B/param",
        ),
        Variant("torch fused, bf16 params", "torch", {"fused": True}, torch.bfloat16, 14.0),
        Variant(
            "adamkit bf16 params + SR",
            "adamkit",
            {"fused": True, "state_precision": "bf16", "stochastic_rounding": True},
            torch.bfloat16,
            14.0,
            ">= 1.6x torch fused, bf16 params (issue 19)",
        ),
    ]


VARIANTS = _variants()


def _optimizer(alg: Algorithm, variant: Variant, case: Case) -> torch.optim.Optimizer:
    params = make_params(case)
    if variant.param_dtype != torch.float32:
        for i, p in enumerate(params):
            low = p.detach().to(variant.param_dtype)
            low.grad = p.grad.to(variant.param_dtype) if p.grad is not None else None
            params[i] = low
    constructor: Callable[..., torch.optim.Optimizer] = alg.constructor(variant.library)
    return constructor(params, **alg.kwargs, **variant.settings)


@dataclass
class Row:
    alg: Algorithm
    variant: Variant
    seconds: float | None
    bytes_per_param: float | None
    why_missing: str = ""
    compute_ns: float | None = None  # per element, with the tensors in cache


RESIDENT = Case("L2", "1 tensor of 65,536 (in cache)", ((65_536,),))
TINY = Case("tiny", "1 tensor of 16", ((16,),))


def measure(case: Case, algs: Sequence[Algorithm], reps: int, target: float) -> list[Row]:
    rows: list[Row] = []
    for alg in algs:
        log(f"{alg.name}: building {len(VARIANTS)} optimizers over {case.numel:,} elements")
        contenders, optimizers, skipped = [], {}, {}
        for variant in VARIANTS:
            if variant.library == "torch" and not alg.torch_has_fused:
                skipped[variant.name] = f"torch.optim.{alg.class_name} has no fused path"
                continue
            opt = _optimizer(alg, variant, case)
            optimizers[variant.name] = opt
            contenders.append(Contender(variant.name, opt.step))
        ready = warm_up(contenders, skipped)
        run_interleaved(ready, reps, target, alg.name)
        timed = {c.name: c.median() for c in ready}
        memory = {
            name: adamkit.state_memory(opt).bytes_per_param for name, opt in optimizers.items()
        }
        del optimizers, contenders, ready
        compute = compute_per_element(alg, reps, target)
        for variant in VARIANTS:
            rows.append(
                Row(
                    alg,
                    variant,
                    timed.get(variant.name),
                    memory.get(variant.name),
                    skipped.get(variant.name, ""),
                    compute.get(variant.name),
                )
            )
    return rows


def compute_per_element(alg: Algorithm, reps: int, target: float) -> dict[str, float]:
    """Seconds per element of each variant's step with everything in cache (see above)."""
    times: dict[tuple[str, str], float] = {}
    for case in (RESIDENT, TINY):
        contenders = [
            Contender(f"{v.name}", _optimizer(alg, v, case).step)
            for v in VARIANTS
            if v.library == "adamkit" or alg.torch_has_fused
        ]
        ready = warm_up(contenders, {})
        run_interleaved(ready, reps, target, f"{alg.name} {case.title}")
        times.update({(c.name, case.key): c.median() for c in ready})
    return {
        name: (times[name, RESIDENT.key] - times[name, TINY.key]) / RESIDENT.numel * 1e9
        for name, key in times
        if key == RESIDENT.key and (name, TINY.key) in times
    }


def render(rows: list[Row], case: Case, reps: int, target: float, busy: str, command: str) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    flags = os.environ.get("ADAMKIT_CFLAGS", "")
    baseline = {r.alg.name: r.seconds for r in rows if r.variant.name == BASELINE}
    body = []
    for r in rows:
        base = baseline.get(r.alg.name)
        ratio = base / r.seconds if base and r.seconds else None
        gbs = r.variant.bytes_per_element * case.numel / r.seconds / 1e9 if r.seconds else None
        body.append(
            [
                r.alg.name,
                r.variant.name,
                fmt(r.bytes_per_param, ".3f"),
                fmt(r.seconds * 1e3 if r.seconds else None, ".2f"),
                fmt(r.seconds * 1e9 / case.numel if r.seconds else None, ".3f"),
                fmt(ratio, ".2f", "x"),
                f"{r.variant.bytes_per_element:.2f}",
                fmt(gbs, ".1f"),
                fmt(r.compute_ns, ".2f"),
                fmt(case.numel * r.compute_ns * 1e-6 if r.compute_ns else None, ".1f"),
                r.variant.target or r.why_missing,
            ]
        )
    header = [
        "algorithm",
        "implementation",
        "state B/param",
        "ms/step",
        "ns/elem (from memory)",
        f"vs {BASELINE}",
        "bytes moved/elem",
        "GB/s",
        "compute ns/elem (in cache)",
        "compute-only ms/step",
        "target",
    ]
    parts = [
        "## Low-precision state benchmark (`benchmarks/bench_precision.py`)"
        + (f", kernel built with `{os.environ['ADAMKIT_CFLAGS']}`" if flags else ""),
        f"Command: `{command}`  \nDate: {date}  \n" + "  \n".join(machine_description()),
        *([busy] if busy else []),
        f"Case {case.label()}, {case.numel:,} elements. Median of {reps} interleaved reps, each "
        f"about {target:g} s of steps; ratios are {BASELINE} time / time (> 1 is faster). "
        "ns/elem (from memory): ms/step per element of the case (both threads at work). "
        "State B/param is `adamkit.state_memory(opt).bytes_per_param` (every state tensor, "
        "step counters and 8-bit block scales included). Compute ns/elem: the step time per "
        f"element on {RESIDENT.title} minus that of {TINY.title}, divided by "
        f"{RESIDENT.numel:,}; compute-only ms/step: that times this case's elements, the time "
        "the step would take if memory cost nothing.",
        table(header, body),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--algorithms", default="Adam,AdamW")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--section",
        default="bench_precision",
        help="the marked section of --out to replace (another one for another build)",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["bench_precision.py", *argv])])
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithms {unknown}; known: {', '.join(ALGORITHMS)}")
    case = make_cases(args.quick)["b"]
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    target = QUICK_TARGET_SECONDS if args.quick else TARGET_SECONDS
    busy = busy_warning()
    if busy:
        log(busy.replace("**", ""))
    rows = measure(case, [ALGORITHMS[n] for n in names], reps, target)
    text = render(rows, case, reps, target, busy, command)
    print(text)
    if args.out is not None:
        write_section(args.out, text, args.section)
        log(f"wrote the {args.section} section of {args.out}")


if __name__ == "__main__":
    main()
