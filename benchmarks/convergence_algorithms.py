"""Train the two models of ``convergence.py`` with every adamkit algorithm, three seeds each.

What it measures
----------------
The same tasks as ``benchmarks/convergence.py`` (the digits MLP and the character
transformer, built, batched and evaluated the same way), trained once per algorithm and seed
with fp32 state. Every algorithm gets the same learning rate (``LR``) and, where it takes one,
the same decoupled weight decay; the few settings that differ are the algorithms' own and are
listed in ``SETTINGS`` (and in the report). charlm runs warmup + cosine for every algorithm
but the schedule-free one, which runs its own warmup and no schedule (its average replaces
the decay) and is evaluated at its average (``adamkit.evaluation_mode``).

Reported per task and algorithm, over the seeds: the final training loss (the whole-set /
fixed-window loss after the last step, as ``convergence.py``), the best loss along the way
(digits: the smoothed minibatch loss; charlm: the validation loss, every 50 steps), the metric
(digits: test accuracy; charlm: validation loss in nats), each as mean and (min-max) over
seeds, and the optimizer state in bytes per parameter. One figure per task: the smoothed
minibatch loss per algorithm, mean over seeds with the seeds' range shaded.

This is a small-scale comparison at one shared learning rate, not a tuned benchmark: it says
which algorithms are safe defaults on two small problems and how far apart they land, not
which is best at scale.

Usage: ``python benchmarks/convergence_algorithms.py [--algorithms A,B] [--tasks digits,charlm]
[--seeds 0,1,2] [--steps-digits N] [--steps-charlm N] [--out-dir DIR] [--md FILE] [--quick]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adamkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import busy_warning, log, machine_description, table, write_section
from convergence import (
    CHARLM_STEPS,
    DIGITS_STEPS,
    LR,
    QUICK_CHARLM_STEPS,
    QUICK_DIGITS_STEPS,
    VAL_EVERY,
    WEIGHT_DECAY,
    Run,
    smooth,
    train,
)

HERE = Path(__file__).resolve().parent
SECTION = "convergence-algorithms"

#: Each algorithm's settings beyond the shared lr (and decoupled weight decay where it takes
#: one): its paper's recommendations for short runs where they differ from its defaults.
SETTINGS: dict[str, dict[str, Any]] = {
    "Adam": {},
    "AdamW": {"weight_decay": WEIGHT_DECAY},
    "RAdam": {"weight_decay": WEIGHT_DECAY, "decoupled_weight_decay": True},
    "NAdam": {"weight_decay": WEIGHT_DECAY, "decoupled_weight_decay": True},
    "Adamax": {},  # no decoupled decay in its signature (torch's)
    # The paper warms alpha and beta3 up over the whole run, and uses beta3 = 0.999 for runs
    # this short (a 0.9999 EMA would remember 10,000 steps of a 600-step run).
    "AdEMAMix": {
        "weight_decay": WEIGHT_DECAY,
        "beta3": 0.999,
        "t_alpha": "steps",
        "t_beta3": "steps",
    },
    "ADOPT": {"weight_decay": WEIGHT_DECAY, "decoupled_weight_decay": True},
    "ScheduleFreeAdamW": {"weight_decay": WEIGHT_DECAY, "warmup_steps": "warmup"},
    # Its lr is not a step size but the cap of its relative step (the step is lr * RMS(theta)):
    # the shared lr does not apply; torch's default, the paper's cap. Not run by default.
    "Adafactor": {"lr": 1e-2, "weight_decay": WEIGHT_DECAY},
    "Adafactor+lr0.03": {"lr": 3e-2, "weight_decay": WEIGHT_DECAY},
    # The options, on AdamW (labels of their own; not run by default).
    "AdamW+cautious": {"weight_decay": WEIGHT_DECAY, "cautious": True},
    "StableAdamW": {"weight_decay": WEIGHT_DECAY},  # its own defaults: betas (0.9, 0.99)
    "AdamW+update_clipping": {"weight_decay": WEIGHT_DECAY, "update_clipping": True},
}
#: What runs without --algorithms: every algorithm once.
DEFAULT = [n for n in SETTINGS if "+" not in n and n not in ("StableAdamW", "Adafactor")]
SEEDS = (0, 1, 2)


def maker(name: str, steps: int, lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The optimizer ``name`` with the shared lr and its SETTINGS (``"steps"``: the run's
    length; ``"warmup"``: the warmup the scheduled runs take)."""
    resolved = {
        k: steps if v == "steps" else min(50, steps // 5) if v == "warmup" else v
        for k, v in SETTINGS[name].items()
    }
    cls = getattr(adamkit, name.split("+")[0])  # "AdamW+cautious": AdamW
    return lambda model: cls(model.parameters(), **{"lr": lr, **resolved})


def spread(values: Sequence[float], digits: int = 4) -> str:
    """``mean (min-max)`` of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite)
    return f"{mean:.{digits}f} ({min(finite):.{digits}f}-{max(finite):.{digits}f})"


def best_loss(run: Run) -> float:
    return min(run.val_losses) if run.val_losses else min(smooth(run.losses), default=math.nan)


def results_table(runs: Sequence[Run], task: str) -> str:
    metric = "test accuracy" if task == "digits" else "val loss (nats)"
    best = "best val loss" if task == "charlm" else "best smoothed train loss"
    rows = []
    names = list(dict.fromkeys(r.precision for r in runs if r.task == task))
    ranked = sorted(
        names,
        key=lambda n: statistics.fmean(
            r.final_train_loss for r in runs if r.task == task and r.precision == n
        ),
    )
    for name in ranked:
        mine = [r for r in runs if r.task == task and r.precision == name and not r.skipped]
        if not mine:
            continue
        rows.append(
            [
                name,
                spread([r.final_train_loss for r in mine]),
                spread([best_loss(r) for r in mine]),
                spread([r.metric for r in mine]),
                f"{mine[0].bytes_per_param:.1f}" if mine[0].bytes_per_param else "n/a",
                f"{statistics.fmean(r.seconds for r in mine):.1f}",
            ]
        )
    header = ["algorithm", "final train loss", best, metric, "state B/param", "time (s)"]
    return table(header, rows)


def plot(runs: Sequence[Run], task: str, path: Path, steps: int, seeds: int, lr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    names = list(dict.fromkeys(r.precision for r in runs if r.task == task))
    for i, name in enumerate(names):
        curves = [smooth(r.losses) for r in runs if r.task == task and r.precision == name]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
        low = [min(c[j] for c in curves) for j in range(n)]
        high = [max(c[j] for c in curves) for j in range(n)]
        style = "-" if i < 10 else "--"
        (line,) = ax.plot(range(1, n + 1), mean, style, lw=1.4, label=name)
        ax.fill_between(range(1, n + 1), low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (minibatch, smoothed)")
    title = "digits MLP" if task == "digits" else "char transformer on Shakespeare"
    ax.set_title(f"{title}: {steps} steps, lr {lr:g}, mean of {seeds} seeds (range shaded)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(
    runs: Sequence[Run],
    command: str,
    steps: dict[str, int],
    seconds: float,
    seeds: Sequence[int],
    lr: float,
) -> str:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    shown = {r.precision for r in runs}
    settings = "; ".join(f"{n}: {s or 'defaults'}" for n, s in SETTINGS.items() if n in shown)
    parts = [
        "## Convergence by algorithm (`benchmarks/convergence_algorithms.py`)"
        + ("" if lr == LR else f", lr {lr:g}"),
        f"Command: `{command}`  \nDate: {date}  \n"
        + "  \n".join(machine_description())
        + f"  \nTotal time: {seconds:.0f} s",
        f"The tasks of `convergence.py` (digits: {steps.get('digits', 0)} steps, constant lr; "
        f"charlm: {steps.get('charlm', 0)} steps, warmup + cosine except for the schedule-free "
        f"optimizer), fp32 state, lr {lr:g} for all but those whose settings give one, seeds "
        f"{', '.join(map(str, seeds))}; "
        f"cells are mean (min-max) over the seeds, rows sorted by final train loss. Settings: "
        f"{settings}.",
    ]
    for task in steps:
        if any(r.task == task for r in runs):
            parts += [f"**{task}**", results_table(runs, task)]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", default=",".join(DEFAULT), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--tasks", default="digits,charlm")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--steps-digits", type=int)
    parser.add_argument("--steps-charlm", type=int)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--md", type=Path, help="markdown file whose section to replace")
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke run")
    parser.add_argument("--lr", type=float, default=LR, help=f"the shared lr (default {LR:g})")
    parser.add_argument("--tag", default="", help="added to the plots' and the section's names")
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", *(sys.argv if argv is None else ["convergence_algorithms.py", *argv])]
    )
    names = [n for n in args.algorithms.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown algorithms {unknown} (known: {', '.join(SETTINGS)})")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    tasks = [t for t in args.tasks.split(",") if t]
    steps = {
        t: {
            "digits": args.steps_digits or (QUICK_DIGITS_STEPS if args.quick else DIGITS_STEPS),
            "charlm": args.steps_charlm or (QUICK_CHARLM_STEPS if args.quick else CHARLM_STEPS),
        }[t]
        for t in tasks
    }
    val_every = max(1, steps.get("charlm", 4) // 4) if args.quick else VAL_EVERY
    busy = busy_warning()
    if busy:
        log(busy.replace("**", ""))
    began = time.perf_counter()
    runs: list[Run] = []
    total, done = len(tasks) * len(names) * len(seeds), 0
    for task in tasks:
        for name in names:
            for seed in seeds:
                done += 1
                log(f"[{done}/{total}] {task} {name} seed {seed}")
                runs.append(
                    train(
                        task, name, steps[task], seed, val_every, maker(name, steps[task], args.lr)
                    )
                )
    seconds = time.perf_counter() - began
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        suffix = ("" if args.lr == LR else f"_lr{args.lr:g}") + (f"_{args.tag}" if args.tag else "")
        path = args.out_dir / f"convergence_algorithms_{task}{suffix}.png"
        plot(runs, task, path, steps[task], len(seeds), args.lr)
        log(f"wrote {path}")
    (args.out_dir / f"convergence_algorithms{suffix}.json").write_text(
        json.dumps([asdict(r) for r in runs]), encoding="utf-8"
    )
    report = render(runs, command, steps, seconds, seeds, args.lr)
    print(report)
    if args.md:
        write_section(args.md, report, SECTION + suffix)
        log(f"updated {args.md}")


if __name__ == "__main__":
    main()
