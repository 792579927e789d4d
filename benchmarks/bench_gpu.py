"""Time one optimizer step of adamkit against torch.optim on a CUDA GPU, against the card's copy
bandwidth.

What it measures
----------------
* **Cases.** (1b) about one billion fp32 parameters in transformer-like tensors (60 matrices of
  4096 x 4096 and 120 vectors of 4096); (c) 2000 tensors of 1000 parameters, where per-tensor
  launch overhead, not memory, decides. Gradients are random, set once and kept.
* **Contenders.** adamkit with its defaults (on a GPU: torch's fused kernels for Adam, AdamW
  and AMSGrad, adamkit's Triton kernel for RAdam, NAdam and Adamax) against torch's fastest
  implementation of the same algorithm: ``fused=True`` where torch has it, else
  ``foreach=True``; and adamkit's Adam with bf16 and 8-bit state (the Triton kernel) against
  torch's fused fp32 Adam. Only the two contenders of one row are on the card at a time.
* **Timing.** 3 warm-up steps (state created, kernels compiled), then calibration picks K steps
  lasting about 0.2 s. Then ``--reps`` times the contenders take turns (the order rotates each
  rep), each timing K steps between two ``torch.cuda.synchronize()``; the table gives the
  median per-step time and the ratio torch / adamkit from the same run.
* **Bandwidth.** The card's copy bandwidth is measured in the same run (``dst.copy_(src)`` of
  2 GiB, counting bytes read and written). adamkit's GB/s is the bytes its step reads and
  writes per element, from the state it actually holds (28 for fp32 Adam: read p, g, m, v;
  write p, m, v; 36 with AMSGrad's v_max; 8-bit codes count their block scales), times the
  number of elements, over the step time; it is also given as a fraction of the copy
  bandwidth. 8-bit state starts at 4096 elements, so case (c) has no 8-bit row.

``--smoke`` runs the harness on the CPU with tiny sizes, with the GPU path's code run there (the
Triton kernel in Triton's interpreter): it checks the script, its numbers mean nothing.
Progress goes to stderr, the tables (markdown) to stdout; ``--out FILE`` replaces this
benchmark's section of FILE (``<!-- bench_gpu:begin/end -->``).

Usage: ``python benchmarks/bench_gpu.py [--smoke] [--reps N] [--out BENCHMARKS.md]
[--algorithms Adam,RAdam,...] [--cases 1b,c]``
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the Triton kernel is defined

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import ALGORITHMS, Algorithm, Case, fmt, log, table, write_section

import adamkit

WARMUP_STEPS = 3
TARGET_SECONDS = 0.2
COPY_BYTES = 2 << 30


def make_cases(smoke: bool) -> dict[str, Case]:
    if smoke:
        cases = [
            Case("1b", "smoke: 3 x (64, 96) + 6 x (64,)", ((64, 96),) * 3 + ((64,),) * 6),
            Case("c", "smoke: 20 tensors of 100", ((100,),) * 20),
        ]
    else:
        shapes = ((4096, 4096),) * 60 + ((4096,),) * 120
        cases = [
            Case("1b", "1.007B params: 60 x (4096, 4096) + 120 x (4096,)", shapes),
            Case("c", "2000 tensors of 1000", ((1000,),) * 2000),
        ]
    return {c.key: c for c in cases}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_params(case: Case, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in case.shapes:
        p = torch.randn(shape, generator=gen, device=device)
        p.grad = torch.randn(shape, generator=gen, device=device)
        params.append(p)
    return params


@dataclass
class Contender:
    label: str
    step: Callable[[], object]
    path: str
    times: list[float]
    moved: float = 0.0  # bytes a step reads and writes per parameter element (adamkit's)


def bytes_moved(opt: torch.optim.Optimizer) -> float:
    """Bytes one step reads and writes per parameter element: the parameter twice, the
    gradient once, and every state tensor on the device (not the 0-d CPU counters) twice."""
    memory = adamkit.state_memory(opt)
    state = sum(v for k, v in memory.by_key.items() if k not in ("step", "mu_product"))
    p = opt.param_groups[0]["params"][0]
    return 3 * p.element_size() + 2 * state / memory.params


# Low-precision state against torch's fused fp32 Adam (the report counts the bytes moved from
# the state each optimizer holds: bytes_moved).
LOW_PRECISION = {
    a.name: a
    for a in (
        Algorithm("Adam bf16", "Adam", {"lr": 1e-3, "state_precision": "bf16"}, 20, True),
        Algorithm("Adam 8bit", "Adam", {"lr": 1e-3, "state_precision": "8bit"}, 16, True),
    )
}


def contenders(alg: Algorithm, case: Case, device: torch.device) -> list[Contender] | None:
    """adamkit and torch on ``case``, or ``None`` where the row would not measure what its
    name says (8-bit state asked for, none created: every tensor is under 4096 elements)."""
    ours = alg.constructor("adamkit")(make_params(case, device), **alg.kwargs)
    ours.step()  # creates the state and builds the plans
    codes = [t for s in ours.state.values() for t in s.values() if t.dtype == torch.uint8]
    if alg.kwargs.get("state_precision") == "8bit" and not codes:
        return None
    flag = {"fused": True} if alg.torch_has_fused else {"foreach": True}
    torch_kwargs = {k: v for k, v in alg.kwargs.items() if k != "state_precision"}
    theirs = alg.constructor("torch")(make_params(case, device), **torch_kwargs, **flag)
    plans = {
        type(entry[1]).__name__
        for _, entries in ours.__dict__.get("_fused_plans", {}).values()
        for entry in entries
    }
    torch_label = f"torch {'fused' if alg.torch_has_fused else 'foreach'}"
    path = ",".join(sorted(plans)) or ours.execution_path()
    return [
        Contender("adamkit", ours.step, path, [], bytes_moved(ours)),
        Contender(torch_label, theirs.step, torch_label, []),
    ]


def time_steps(step: Callable[[], object], steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def copy_bandwidth(device: torch.device, nbytes: int, reps: int) -> float:
    """Bytes read plus bytes written per second by ``dst.copy_(src)``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = [time_steps(lambda: dst.copy_(src), 5, device) for _ in range(reps + 1)][1:]
    return 2 * nbytes / statistics.median(times)


def run(
    algs: Sequence[Algorithm], cases: Sequence[Case], reps: int, device: torch.device
) -> list[tuple[Case, Algorithm, list[Contender]]]:
    results = []
    for case in cases:
        for alg in algs:
            log(f"{case.key} {alg.name}: building")
            group = contenders(alg, case, device)
            if group is None:
                log(f"{case.key} {alg.name}: skipped, its tensors are too small for 8-bit state")
                continue
            for c in group:
                for _ in range(WARMUP_STEPS):
                    c.step()
            steps = max(1, round(TARGET_SECONDS / time_steps(group[0].step, 2, device)))
            for rep in range(reps):
                for c in group[rep % 2 :] + group[: rep % 2]:
                    c.times.append(time_steps(c.step, steps, device))
                log(f"{case.key} {alg.name}: rep {rep + 1}/{reps}")
            for c in group:
                c.step = lambda: None  # free the optimizer and its tensors
            results.append((case, alg, group))
            del group
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def report(
    results: list[tuple[Case, Algorithm, list[Contender]]], copy_gbs: float, device: torch.device
) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} CPU (--smoke: checks the harness, the numbers mean nothing)"
    lines = [
        "## GPU step benchmark (`benchmarks/bench_gpu.py`)",
        "",
        f"Device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"copy bandwidth {copy_gbs / 1e9:.0f} GB/s (read + write of one buffer by `copy_`).",
        "",
    ]
    rows = []
    for case, alg, (ours, theirs) in results:
        t_ours, t_theirs = statistics.median(ours.times), statistics.median(theirs.times)
        gbs = ours.moved * case.numel / t_ours
        rows.append(
            [
                f"({case.key})",
                alg.name,
                ours.path,
                fmt(t_ours * 1e3, ".3f"),
                theirs.label,
                fmt(t_theirs * 1e3, ".3f"),
                fmt(t_theirs / t_ours, ".2f", "x"),
                f"{gbs / 1e9:.0f} ({100 * gbs / copy_gbs:.0f}%)",
            ]
        )
    header = [
        "case",
        "algorithm",
        "adamkit kernel",
        "adamkit ms",
        "torch",
        "torch ms",
        "speedup",
        "adamkit GB/s (% of copy)",
    ]
    return "\n".join(lines) + table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--algorithms", default=None)
    parser.add_argument("--cases", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        import adamkit.optim._router as router

        router.gpu_path = lambda device: True  # the GPU path's code, on CPU tensors
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (--smoke checks the harness on the CPU)")
    else:
        device = torch.device("cuda")
    reps = args.reps or (1 if args.smoke else 7)
    cases = make_cases(args.smoke)
    wanted_cases = args.cases.split(",") if args.cases else list(cases)
    known = {**ALGORITHMS, **LOW_PRECISION}
    wanted_algs = args.algorithms.split(",") if args.algorithms else list(known)
    unknown = [n for n in wanted_cases if n not in cases] + [
        n for n in wanted_algs if n not in known
    ]
    if unknown:
        raise SystemExit(f"unknown case or algorithm: {', '.join(unknown)}")
    log(f"adamkit {adamkit.__version__}: measuring copy bandwidth")
    copy_gbs = copy_bandwidth(device, (1 << 20) if args.smoke else COPY_BYTES, reps)
    results = run([known[n] for n in wanted_algs], [cases[k] for k in wanted_cases], reps, device)
    body = report(results, copy_gbs, device)
    command = "python benchmarks/bench_gpu.py" + "".join(
        f" {flag}" if value is True else f" {flag} {shlex.quote(str(value))}"
        for flag, value in [
            ("--smoke", args.smoke),
            ("--reps", args.reps),
            ("--algorithms", args.algorithms),
            ("--cases", args.cases),
            ("--out", args.out and args.out.name),  # written where its section is kept
        ]
        if value
    )
    body += f"\n\nCommand: `{command.strip()}`; medians of {reps} interleaved repetitions.\n"
    print(body)
    if args.out is not None:
        write_section(args.out, body, "bench_gpu")


if __name__ == "__main__":
    main()
