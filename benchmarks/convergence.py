"""Train two small models once per optimizer-state precision and compare how far each gets.

What it measures
----------------
Every adamkit optimizer takes ``state_precision="fp32" | "bf16" | "8bit"``: how its moments are
stored (the update math runs in fp32 either way). This script trains the same two models with
``adamkit.AdamW`` once per precision and reports how close the low-precision runs end to fp32.
Within a task every run is identical except for ``state_precision``: the model is built right
after ``torch.manual_seed(seed)``, the minibatches come from a ``torch.Generator`` seeded the
same way, and there is no dropout. The loss before the first optimizer step is therefore the
same in every run, and the script checks that it is, bit for bit.

* **digits**: scikit-learn's bundled 8x8 digits (1,797 images, pixels scaled to [0, 1]), a
  fixed 80/20 train/test split, an MLP 64-128-128-10 with GELU, cross-entropy, minibatches of
  64 (the training set reshuffled every epoch), ``AdamW(lr=3e-3, weight_decay=0.01)`` at a
  constant learning rate. Reported: the final training loss, which is the mean cross-entropy
  over the *whole* training set evaluated after the last step (less noisy than the last
  minibatch losses), and the test accuracy.
* **charlm**: a character-level causal transformer on ``benchmarks/data/shakespeare.txt``
  (the first 95,962 characters of tinyshakespeare), split 90/10 into train and validation.
  Token and learned position embeddings, 2 pre-norm ``nn.TransformerEncoderLayer`` blocks
  (d_model 128, 4 heads, feed-forward 512, GELU, causal mask), a final LayerNorm and a linear
  head; context 64 characters; each step takes 32 windows at random offsets of the training
  text. ``AdamW(lr=3e-3, weight_decay=0.01)`` with
  ``adamkit.Scheduler(opt, "warmup(50) + cosine(N-50, floor=0.1)")`` for N steps (the warmup
  is N/5 steps when N < 250). Reported: the final
  training loss, which is the mean cross-entropy over a fixed set of 512 training windows
  (random offsets drawn once from the seed, the same in every run) evaluated after the last
  step, and the validation loss over every non-overlapping 64-character window of the
  validation text (also evaluated every 50 steps for the plot), in nats and in bits per
  character (nats / ln 2).

Every minibatch loss is recorded. The target for the low-precision states is a final training
loss within 1% (relative) of fp32's. The state's size comes from ``adamkit.state_memory(opt)``
(``n/a`` where this adamkit has none). Wall time is the training loop only (forward, backward,
optimizer and scheduler steps), without the evaluations.

Outputs: progress on stderr; a markdown report on stdout (machine, load, command, a table, one
row per run); in ``--out-dir`` (default ``benchmarks/results``) ``convergence_digits.png`` and
``convergence_charlm.png``, and ``convergence.json`` with every recorded loss. Each figure has
one line per precision: on top the minibatch loss smoothed with an EMA run forward and backward
(no lag), the raw loss faint behind it, and charlm's validation loss; below, the smoothed loss
relative to fp32's, in percent, with the 1% band shaded. ``--md FILE``
replaces this benchmark's section of FILE (between ``<!-- convergence:begin -->`` and
``<!-- convergence:end -->``), creating FILE if needed and keeping the rest of it. ``--quick``
takes a few steps of each task: it checks the harness, its numbers mean nothing.

Usage: ``python benchmarks/convergence.py [--precisions fp32,bf16,8bit] [--tasks digits,charlm]
[--steps-digits N] [--steps-charlm N] [--out-dir DIR] [--md FILE] [--quick] [--seed S]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import adamkit
from adamkit.optim.schedulefree import evaluation_mode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import (  # the sibling benchmark's harness
    busy_warning,
    log,
    machine_description,
    table,
    write_section,
)

HERE = Path(__file__).resolve().parent
TEXT_PATH = HERE / "data" / "shakespeare.txt"
SECTION = "convergence"  # the markers <!-- convergence:begin/end --> of --md's file

PRECISIONS = ("fp32", "bf16", "8bit")
TARGET_RELATIVE = 0.01  # final training loss within 1% of fp32's

DIGITS_STEPS = 600
CHARLM_STEPS = 500
QUICK_DIGITS_STEPS = 40
QUICK_CHARLM_STEPS = 20

LR = 3e-3
WEIGHT_DECAY = 0.01
BATCH_DIGITS = 64
BATCH_CHARLM = 32
CONTEXT = 64
D_MODEL = 128
HEADS = 4
LAYERS = 2
WARMUP = 50
COSINE_FLOOR = 0.1
VAL_EVERY = 50
EVAL_BATCH = 64  # windows per forward pass when evaluating
TRAIN_EVAL_WINDOWS = 512  # charlm: the fixed training windows of the final training loss

EMA_BETA = 0.9  # smoothing of the plotted minibatch loss (forward and backward)
COLORS = {"fp32": "tab:blue", "bf16": "tab:orange", "8bit": "tab:green"}
LINESTYLES = {"fp32": "-", "bf16": (0, (5, 2)), "8bit": (0, (1, 1.5))}


# ------------------------------------------------------------------------------ results
@dataclass
class Run:
    """One training run of one task with one state precision."""

    task: str
    precision: str
    steps: int
    losses: list[float] = field(default_factory=list)  # minibatch loss before each step
    val_steps: list[int] = field(default_factory=list)  # charlm: steps taken at each val eval
    val_losses: list[float] = field(default_factory=list)
    final_train_loss: float = math.nan
    metric: float = math.nan  # digits: test accuracy; charlm: validation loss (nats)
    bytes_per_param: float | None = None
    state_bytes: int | None = None
    seconds: float = 0.0
    skipped: str | None = None  # why the run could not be made, if it could not


@dataclass
class Task:
    """A task: a model, its data and how to train and evaluate it, built from one seed.

    ``loss_at(step)`` returns the minibatch loss of step ``step`` (with the graph, for
    backward); ``final_train_loss()`` and ``metric()`` evaluate the model without gradients;
    ``val_loss()`` (charlm only) is the periodic validation loss for the plot.
    """

    name: str
    model: nn.Module
    loss_at: Callable[[int], torch.Tensor]
    final_train_loss: Callable[[], float]
    metric: Callable[[], float]
    schedule: str | None = None
    val_loss: Callable[[], float] | None = None


# -------------------------------------------------------------------------------- tasks
def build_digits(seed: int, steps: int) -> Task:
    """The digits MLP: fixed 80/20 split, minibatches of 64 reshuffled each epoch."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the digits task needs scikit-learn (pip install scikit-learn)") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[: len(x) // 5], order[len(x) // 5 :]

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 10)
    )

    batches_per_epoch = len(train) // BATCH_DIGITS  # the remainder is dropped each epoch
    shuffle = torch.Generator().manual_seed(seed + 1)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        perm = train[torch.randperm(len(train), generator=shuffle)]
        batches += [
            perm[i * BATCH_DIGITS : (i + 1) * BATCH_DIGITS] for i in range(batches_per_epoch)
        ]

    def loss_at(step: int) -> torch.Tensor:
        batch = batches[step]
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    @torch.no_grad()
    def final_train_loss() -> float:
        return float(nn.functional.cross_entropy(model(x[train]), y[train]))

    @torch.no_grad()
    def test_accuracy() -> float:
        return float((model(x[test]).argmax(1) == y[test]).float().mean())

    return Task("digits", model, loss_at, final_train_loss, test_accuracy)


class CharTransformer(nn.Module):
    """A small causal transformer over characters: embeddings, pre-norm blocks, a linear head.

    The blocks are built one by one (not with ``nn.TransformerEncoder``, which deep-copies one
    layer and so starts every block from the same weights).
    """

    def __init__(self, vocab: int, context: int, d_model: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                heads,
                dim_feedforward=4 * d_model,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.mask: torch.Tensor  # additive causal mask: -inf above the diagonal
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, time, vocab)`` for character ids ``(batch, time)``."""
        length = idx.shape[1]
        h = self.tokens(idx) + self.positions(torch.arange(length, device=idx.device))
        mask = self.mask[:length, :length]
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        logits: torch.Tensor = self.head(self.norm(h))
        return logits


def _windows(text: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets of the windows of ``CONTEXT`` chars at ``starts``."""
    offsets = torch.arange(CONTEXT + 1)
    chunk = text[starts[:, None] + offsets]
    return chunk[:, :-1], chunk[:, 1:]


def build_charlm(seed: int, steps: int) -> Task:
    """The character LM: 90/10 split, 32 random windows per step, warmup + cosine."""
    text = TEXT_PATH.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    train, val = ids[:cut], ids[cut:]

    torch.manual_seed(seed)
    model = CharTransformer(len(vocab), CONTEXT, D_MODEL, HEADS, LAYERS)

    sampler = torch.Generator().manual_seed(seed + 1)
    starts = torch.randint(len(train) - CONTEXT, (steps, BATCH_CHARLM), generator=sampler)

    def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.ravel())

    def loss_at(step: int) -> torch.Tensor:
        inputs, targets = _windows(train, starts[step])
        return mean_loss(model(inputs), targets)

    @torch.no_grad()
    def mean_over(part: torch.Tensor, window_starts: torch.Tensor) -> float:
        """Mean loss over the windows of ``part`` at ``window_starts`` (all of one length)."""
        total, count = 0.0, 0
        for chunk in window_starts.split(EVAL_BATCH):
            inputs, targets = _windows(part, chunk)
            total += mean_loss(model(inputs), targets).item() * targets.numel()
            count += targets.numel()
        return total / count

    # Fixed for the whole run and the same in every run: training windows at random offsets,
    # and every non-overlapping window of the validation text.
    train_eval = torch.randint(
        len(train) - CONTEXT,
        (TRAIN_EVAL_WINDOWS,),
        generator=torch.Generator().manual_seed(seed + 2),
    )
    val_eval = torch.arange(0, len(val) - CONTEXT, CONTEXT)

    warmup = min(WARMUP, steps // 5)
    schedule = f"warmup({warmup}) + cosine({steps - warmup}, floor={COSINE_FLOOR})"
    return Task(
        name="charlm",
        model=model,
        loss_at=loss_at,
        final_train_loss=lambda: mean_over(train, train_eval),
        metric=lambda: mean_over(val, val_eval),
        schedule=schedule,
        val_loss=lambda: mean_over(val, val_eval),
    )


BUILDERS: dict[str, Callable[[int, int], Task]] = {"digits": build_digits, "charlm": build_charlm}


# ------------------------------------------------------------------------------ training
def make_optimizer(model: nn.Module, precision: str) -> torch.optim.Optimizer:
    """AdamW with the shared hyperparameters; only ``state_precision`` varies."""
    return adamkit.AdamW(
        model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, state_precision=precision
    )


def measure_state(opt: torch.optim.Optimizer) -> tuple[int | None, float | None]:
    """``(total bytes, bytes per parameter)`` from ``adamkit.state_memory``, if it exists."""
    state_memory = getattr(adamkit, "state_memory", None)
    if state_memory is None:
        return None, None
    memory = state_memory(opt)
    return int(memory.total_bytes), float(memory.bytes_per_param)


def warm_up(precisions: Iterable[str]) -> None:
    """One step per precision on a throwaway parameter, so that no timed run pays for loading
    or compiling an optimizer kernel on its first step (the first run would otherwise)."""
    for precision in precisions:
        param = nn.Parameter(torch.zeros(8192))
        try:
            opt = adamkit.AdamW([param], lr=LR, state_precision=precision)
        except (TypeError, ValueError, NotImplementedError):
            continue  # train() reports it
        param.grad = torch.ones_like(param)
        opt.step()


def train(
    task_name: str,
    precision: str,
    steps: int,
    seed: int,
    val_every: int,
    make: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> Run:
    """Build ``task_name`` from ``seed`` and train it ``steps`` steps with ``precision`` (or,
    given ``make``, with the optimizer it makes, ``precision`` then being the run's label).
    A schedule-free optimizer takes no schedule (its own warmup) and is evaluated at its
    average (``adamkit.evaluation_mode``)."""
    run = Run(task_name, precision, steps)
    task = BUILDERS[task_name](seed, steps)
    try:
        opt = make(task.model) if make is not None else make_optimizer(task.model, precision)
    except (TypeError, ValueError, NotImplementedError) as error:
        run.skipped = f"{type(error).__name__}: {error}"
        log(f"{task_name} {precision}: skipped ({run.skipped})")
        return run
    schedule_free = "train_mode" in opt.param_groups[0]
    scheduler = (
        adamkit.Scheduler(opt, task.schedule) if task.schedule and not schedule_free else None
    )
    report_every = max(1, steps // 10)

    task.model.train()
    seconds = 0.0
    for step in range(steps):
        start = time.perf_counter()
        loss = task.loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        seconds += time.perf_counter() - start
        run.losses.append(loss.item())
        if not math.isfinite(run.losses[-1]):
            log(f"{task_name} {precision}: loss {run.losses[-1]} at step {step}; stopping")
            break
        done = step + 1
        if task.val_loss is not None and (done % val_every == 0 or done == steps):
            task.model.eval()
            run.val_steps.append(done)
            with evaluation_mode(opt):
                run.val_losses.append(task.val_loss())
            task.model.train()
        if done % report_every == 0 or done == steps:
            extra = f", val {run.val_losses[-1]:.4f}" if run.val_steps[-1:] == [done] else ""
            log(f"{task_name} {precision}: step {done}/{steps}, loss {run.losses[-1]:.4f}{extra}")

    run.seconds = seconds
    run.state_bytes, run.bytes_per_param = measure_state(opt)
    task.model.eval()
    with evaluation_mode(opt):
        run.final_train_loss = task.final_train_loss()
        run.metric = task.metric()
    return run


# ---------------------------------------------------------------------------------- plots
def ema(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average, bias-corrected so that it starts at the first value."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return out


def smooth(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """An EMA run forward and then backward: smoothed like an EMA, but without its lag.

    A one-way EMA trails a falling loss by about ``1 / (1 - beta)`` steps, which draws the early,
    steep part of a curve well above the losses it averages.
    """
    return ema(ema(values, beta)[::-1], beta)[::-1]


def plot_task(runs: Sequence[Run], path: Path, title: str, log_y: bool) -> None:
    """Two panels: the losses of every run, and each run's smoothed loss relative to fp32's.

    Top: per precision, the raw minibatch loss (faint), its smoothed curve and, for charlm, the
    validation loss (dashed, with markers). Bottom: ``smoothed / fp32 smoothed - 1`` in percent,
    with the 1% band shaded, so that runs too close to tell apart on top can still be compared.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 7), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    smoothed = {run.precision: smooth(run.losses) for run in runs}
    for run in runs:
        color = COLORS.get(run.precision)
        steps = range(1, len(run.losses) + 1)
        style = LINESTYLES.get(run.precision, "-")
        top.plot(steps, run.losses, color=color, alpha=0.15, linewidth=0.7)
        top.plot(
            steps,
            smoothed[run.precision],
            color=color,
            linestyle=style,
            linewidth=1.8,
            label=f"{run.precision} train (minibatch, smoothed)",
        )
        if run.val_steps:
            top.plot(
                run.val_steps,
                run.val_losses,
                color=color,
                linestyle="--",
                marker="o",
                markersize=3.5,
                linewidth=1.0,
                label=f"{run.precision} validation",
            )
    if log_y:
        top.set_yscale("log")
    top.set_ylabel("cross-entropy (nats)")
    top.set_title(title)
    top.grid(True, which="both", alpha=0.3)
    top.legend(fontsize="small")

    base = smoothed.get("fp32")
    bottom.axhspan(-100 * TARGET_RELATIVE, 100 * TARGET_RELATIVE, color="0.85", label="±1%")
    bottom.axhline(0.0, color=COLORS["fp32"], linewidth=1.0)
    if base is not None:
        for run in runs:
            if run.precision == "fp32":
                continue
            n = min(len(base), len(run.losses))
            rel = [100 * (smoothed[run.precision][i] / base[i] - 1) for i in range(n)]
            bottom.plot(
                range(1, n + 1),
                rel,
                color=COLORS.get(run.precision),
                linestyle=LINESTYLES.get(run.precision, "-"),
                linewidth=1.4,
                label=run.precision,
            )
        bottom.legend(fontsize="small", ncols=3)
    else:
        bottom.text(0.5, 0.5, "no fp32 run", transform=bottom.transAxes, ha="center")
    bottom.set_ylabel("train loss vs fp32 (%)")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------- report
def relative_to_fp32(run: Run, runs: Sequence[Run]) -> float | None:
    """``(loss - fp32 loss) / fp32 loss`` of the final training loss, if fp32 ran."""
    base = next((r for r in runs if r.task == run.task and r.precision == "fp32"), None)
    if base is None or base.skipped or not base.final_train_loss:
        return None
    return (run.final_train_loss - base.final_train_loss) / base.final_train_loss


def _metric_cell(run: Run) -> str:
    if run.task == "digits":
        return f"acc {100 * run.metric:.2f}%"
    return f"val {run.metric:.4f} ({run.metric / math.log(2):.3f} bpc)"


def results_table(runs: Sequence[Run]) -> str:
    """The table: one row per run that was made."""
    rows = []
    for run in runs:
        if run.skipped:
            continue
        rel = relative_to_fp32(run, runs)
        rows.append(
            [
                run.task,
                run.precision,
                f"{run.final_train_loss:.5g}",
                "reference"
                if run.precision == "fp32"
                else "—"
                if rel is None
                else f"{100 * rel:+.2f}",
                _metric_cell(run),
                "n/a" if run.bytes_per_param is None else f"{run.bytes_per_param:.3f}",
                f"{run.seconds:.1f} s",
            ]
        )
    header = [
        "task",
        "precision",
        "final train loss",
        "rel. diff vs fp32 (%)",
        "test acc / val loss",
        "state bytes/param",
        "wall time",
    ]
    return table(header, rows)


def verdict_lines(runs: Sequence[Run]) -> list[str]:
    """Per low-precision run, whether it met the 1% target; then any skipped runs."""
    lines = []
    for run in runs:
        if run.skipped or run.precision == "fp32":
            continue
        rel = relative_to_fp32(run, runs)
        if rel is None:
            lines.append(f"- {run.task} {run.precision}: no fp32 run to compare with")
        else:
            if abs(rel) <= TARGET_RELATIVE:
                verdict = "meets the target"
            else:
                side = "lower" if rel < 0 else "higher"
                verdict = f"misses the target (a {side} loss than fp32)"
            lines.append(f"- {run.task} {run.precision}: {100 * rel:+.2f}%, {verdict}")
    lines += [f"- {r.task} {r.precision}: not run ({r.skipped})" for r in runs if r.skipped]
    return lines


def first_loss_check(runs: Sequence[Run]) -> list[str]:
    """Warnings where a task's loss before any step differs between precisions."""
    warnings = []
    for task in BUILDERS:
        firsts = {r.precision: r.losses[0] for r in runs if r.task == task and r.losses}
        if len(set(firsts.values())) > 1:
            warnings.append(
                f"**Warning:** {task}: the loss before the first step differs between "
                f"precisions ({firsts}): the runs did not start from the same model and batch."
            )
    return warnings


@dataclass(frozen=True)
class Timing:
    """How long the whole run took, and how busy the machine was around it."""

    seconds: float
    load_before: float  # 1-minute load average as the run started
    load_after: float  # and as it ended
    busy: str  # bench_step's warning when the machine was busy at the start, else ""


def render(runs: Sequence[Run], command: str, steps: dict[str, int], timing: Timing) -> str:
    """The markdown report."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "## Convergence by optimizer-state precision (`benchmarks/convergence.py`)",
        f"Command: `{command}`  \nDate: {date}  \n"
        + "  \n".join(machine_description())
        + f"  \nTotal time: {timing.seconds:.0f} s; 1-minute load average "
        f"{timing.load_before:.2f} at the start, {timing.load_after:.2f} at the end",
        timing.busy,
        *first_loss_check(runs),
        f"AdamW (lr {LR:g}, weight decay {WEIGHT_DECAY:g}); the runs of a task differ only in "
        "`state_precision`. "
        f"**digits**: MLP 64-128-128-10 (GELU) on scikit-learn's digits, 80/20 split, "
        f"minibatches of {BATCH_DIGITS}, {steps.get('digits', 0)} steps, constant lr; final "
        "train loss = cross-entropy over the whole training set after the last step. "
        f"**charlm**: causal transformer ({LAYERS} pre-norm layers, d_model {D_MODEL}, "
        f"{HEADS} heads, context {CONTEXT}) on `benchmarks/data/shakespeare.txt`, 90/10 split, "
        f"{BATCH_CHARLM} random windows per step, {steps.get('charlm', 0)} steps, "
        f"warmup + cosine to {COSINE_FLOOR:g}x; final train loss = cross-entropy over "
        f"{TRAIN_EVAL_WINDOWS} fixed training windows after the last step, val loss = over "
        "every non-overlapping window of the validation text. "
        "Wall time: the training loop only.",
        f"**Target:** final training loss within {100 * TARGET_RELATIVE:g}% (relative) of fp32.",
        results_table(runs),
        "\n".join(verdict_lines(runs)),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


# ----------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help=f"comma-separated state precisions (default {','.join(PRECISIONS)})",
    )
    parser.add_argument("--tasks", default="digits,charlm", help="comma-separated tasks")
    parser.add_argument("--steps-digits", type=int, help=f"default {DIGITS_STEPS}")
    parser.add_argument("--steps-charlm", type=int, help=f"default {CHARLM_STEPS}")
    parser.add_argument("--seed", type=int, default=0, help="model, split and batch seed")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="plots and JSON")
    parser.add_argument("--md", type=Path, help="markdown file whose section to replace")
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke run")
    return parser.parse_args(argv)


def _split(names: str, known: Sequence[str], what: str) -> list[str]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return wanted


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["convergence.py", *argv])])
    precisions = _split(args.precisions, PRECISIONS, "precisions")
    tasks = _split(args.tasks, list(BUILDERS), "tasks")
    steps = {
        "digits": args.steps_digits or (QUICK_DIGITS_STEPS if args.quick else DIGITS_STEPS),
        "charlm": args.steps_charlm or (QUICK_CHARLM_STEPS if args.quick else CHARLM_STEPS),
    }
    val_every = max(1, steps["charlm"] // 4) if args.quick else VAL_EVERY

    busy = busy_warning()
    if busy:
        log(busy.replace("**", ""))
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    warm_up(precisions)
    runs = [train(t, p, steps[t], args.seed, val_every) for t in tasks for p in precisions]
    timing = Timing(time.perf_counter() - began, load_before, os.getloadavg()[0], busy)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    titles = {
        "digits": f"digits MLP, AdamW, {steps['digits']} steps (log y)",
        "charlm": f"char transformer on Shakespeare, AdamW, {steps['charlm']} steps",
    }
    for task in tasks:
        made = [r for r in runs if r.task == task and not r.skipped]
        if made:
            path = args.out_dir / f"convergence_{task}.png"
            plot_task(made, path, titles[task], log_y=task == "digits")
            log(f"wrote {path}")
    raw = args.out_dir / "convergence.json"
    raw.write_text(json.dumps({"command": command, "runs": [asdict(r) for r in runs]}))
    log(f"wrote {raw}")

    report = render(runs, command, {t: steps[t] for t in tasks}, timing)
    print(report)
    if args.md is not None:
        write_section(args.md, report, SECTION)
        log(f"wrote the convergence section of {args.md}")


if __name__ == "__main__":
    main()
