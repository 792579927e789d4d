"""``adamkit tour``: every section of the seed tutorial, run for real on built-in data.

1. Adam fits ``t = a*x + b + noise`` with ``nn.Linear(1, 1)`` (and equals torch.optim.Adam).
2. The from-scratch NumPy rule on ``m^2 - 2m + 1``, corrected (and the seed's bug shown).
3. RAdam on the same regression, with its rectification switching on.
4. Coupled L2 weight decay (Adam) against decoupled decay (AdamW).
5. The seed's learning-rate plots, ``LambdaLR(0.67**epoch)`` and ``MultiplicativeLR(0.69)``, as
   adamkit schedules (checked against torch's schedulers), changing the learning rate mid-run
   with ``adamkit.set_lr``, and warmup + cosine / WSD / inverse-sqrt / one-cycle, as PNG files.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from . import reference
from ._plot import save_curves, text_chart
from .optim import Adam, AdamW, RAdam, radam_rectification
from .schedules import Scheduler, get_lr, plot_schedule, set_lr

__all__ = ["run_tour"]

A_TRUE, B_TRUE, NOISE, N_POINTS = 2.4785694, 7.3256989, 0.1, 100


def _heading(number: int, title: str) -> None:
    print(f"\n{'=' * 78}\n{number}. {title}\n{'=' * 78}")


def regression_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's data: ``t = a*x + b + 0.1 * noise`` at 100 points."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_POINTS, 1, generator=g)
    t = A_TRUE * x + B_TRUE + torch.randn(N_POINTS, 1, generator=g) * NOISE
    return x, t


def fit_line(
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    iterations: int,
    report: Callable[[int, float, float, float], None] | None = None,
    seed: int = 0,
) -> tuple[list[tuple[float, float, float]], nn.Linear]:
    """Train ``nn.Linear(1, 1)`` with MSE on the seed's data; return (loss, a, b) per iteration."""
    x, t = regression_data(seed)
    torch.manual_seed(seed)
    model = nn.Linear(1, 1)
    optimizer = make_optimizer(list(model.parameters()))
    loss_fn = nn.MSELoss()
    history = []
    for i in range(1, iterations + 1):
        optimizer.zero_grad()
        loss = loss_fn(model(x), t)
        loss.backward()
        optimizer.step()
        a, b = model.weight.item(), model.bias.item()
        history.append((loss.item(), a, b))
        if report is not None:
            report(i, loss.item(), a, b)
    return history, model


def section_linear_regression(out: Path) -> None:
    _heading(1, "Adam fits t = a*x + b + noise with nn.Linear(1, 1)  (seed: 'Adam example')")
    print(f"true a = {A_TRUE}, true b = {B_TRUE}, noise = {NOISE}, n = {N_POINTS}, lr = 0.05")
    print(f"{'iter':>6} {'loss':>12} {'learned a':>12} {'learned b':>12}")

    def report(i: int, loss: float, a: float, b: float) -> None:
        if i <= 3 or i % 50 == 0:
            print(f"{i:>6} {loss:>12.6f} {a:>12.6f} {b:>12.6f}")

    ours, _ = fit_line(lambda ps: Adam(ps, lr=0.05), 400, report)
    theirs, _ = fit_line(lambda ps: torch.optim.Adam(ps, lr=0.05, foreach=True), 400)
    _, a, b = ours[-1]
    print(
        f"final: a = {a:.6f} (error {abs(a - A_TRUE):.2e}), "
        f"b = {b:.6f} (error {abs(b - B_TRUE):.2e})"
    )
    gap = max(
        abs(u - v)
        for row_u, row_v in zip(ours, theirs, strict=True)
        for u, v in zip(row_u, row_v, strict=True)
    )
    print(f"torch.optim.Adam on the same run: largest difference over 400 iterations = {gap:.1e}")
    print("(the seed trains 10 iterations; at lr=0.05 that moves b by at most 0.5, so it cannot")
    print(" reach b = 7.33: we train until the fit has converged)")
    save_curves(
        out / "linear_regression.png",
        {"adamkit.Adam": (range(1, len(ours) + 1), [h[0] for h in ours])},
        title="Adam (lr=0.05) on t = a*x + b + noise",
        xlabel="iteration",
        ylabel="MSE loss",
        logy=True,
    )


def _seed_rule_with_its_bug(steps: int) -> list[float]:
    """The seed's update for b, with its bug kept: the second moment sums ``db`` unsquared."""
    beta1, beta2, eta, eps = 0.9, 0.999, 0.01, 1e-8
    b, m, v, values = 0.0, 0.0, 0.0, []
    with np.errstate(invalid="ignore"):
        for t in range(1, steps + 1):
            db = 2 * b - 2
            m = beta1 * m + (1 - beta1) * db
            v = beta2 * v + (1 - beta2) * db  # the bug: should be db**2
            b = b - eta * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
            values.append(float(b))
    return values


def section_from_scratch() -> None:
    _heading(2, "Adam from scratch in NumPy on m^2 - 2m + 1  (seed: 'Adam optimizer code')")
    print("adamkit.reference.adam is the NumPy twin every fast path is tested against.")
    w, b = np.array(0.0), np.array(0.0)
    state_w: reference.State | None = None
    state_b: reference.State | None = None
    tolerance, t = 1e-10, 0
    for t in range(1, 20001):
        w_old, b_old = w, b
        w, state_w = reference.adam(w, 2 * w - 2, state_w, lr=0.01)
        b, state_b = reference.adam(b, 2 * b - 2, state_b, lr=0.01)
        if t <= 3 or t % 250 == 0:
            print(f"iteration {t:>5}: weight = {float(w):.12f}   b = {float(b):.12f}")
        if abs(w - w_old) < tolerance and abs(b - b_old) < tolerance:
            break
    print(f"converged after {t} iterations: weight = {float(w):.12f}, b = {float(b):.12f}")
    print(f"(stopped when both moved less than {tolerance:g} in one iteration; minimum at m = 1)")
    buggy = _seed_rule_with_its_bug(5)
    print("\nWhat the seed's version gets wrong, and what this one does instead:")
    print("  - it imports numpy as `num` but calls `np`: it does not run at all;")
    print(
        "  - v_db adds db, not db**2: with db = -2 the second moment goes negative"
        f" and b is {buggy[0]}"
    )
    print("    from the first iteration (ours squares every gradient);")
    print("  - it stops on exact float equality w_new == w_old, which depends on rounding luck")
    print("    (ours stops on a stated tolerance).")


def section_radam(out: Path) -> None:
    _heading(3, "Rectified Adam (RAdam) on the same regression  (seed: 'Rectified Adam')")
    print("While rho_t <= 5 the adaptive step's variance is intractable and RAdam takes a")
    print("momentum-SGD step; then the rectifier r_t scales the Adam step up towards 1.")
    print(f"{'step':>5} {'rho_t':>8} {'r_t':>8} {'loss':>12}   mode")

    def report(i: int, loss: float, a: float, b: float) -> None:
        if i <= 8 or i in (50, 100, 200, 400):
            rho, r = radam_rectification(i, 0.999)
            mode = "momentum SGD (not rectified)" if r is None else "rectified Adam"
            print(
                f"{i:>5} {rho:>8.3f} {'-' if r is None else f'{r:.4f}':>8} {loss:>12.6f}   {mode}"
            )

    history, _ = fit_line(lambda ps: RAdam(ps, lr=0.05), 400, report)
    adam_history, _ = fit_line(lambda ps: Adam(ps, lr=0.05), 400)
    loss, a, b = history[-1]
    print(
        f"final: a = {a:.6f}, b = {b:.6f} (loss {loss:.6f}; Adam reaches {adam_history[-1][0]:.6f})"
    )
    steps = range(1, 401)
    save_curves(
        out / "radam.png",
        {
            "RAdam": (steps, [h[0] for h in history]),
            "Adam": (steps, [h[0] for h in adam_history]),
        },
        title="RAdam vs Adam (lr=0.05); RAdam rectifies from step 6",
        xlabel="iteration",
        ylabel="MSE loss",
        logy=True,
    )


def section_weight_decay(out: Path) -> None:
    _heading(4, "Weight decay: coupled L2 (Adam) vs decoupled (AdamW)  (seed: 'weight decay')")
    print("Adam(weight_decay=wd) adds wd * theta to the gradient (the seed's L2 penalty), so the")
    print("penalty is divided by sqrt(v) like the rest of the gradient. AdamW shrinks theta by")
    print("lr * wd every step, outside the adaptive scaling. Same problem, wd = 0.1, lr = 0.05:")
    runs = {
        "no decay": lambda ps: Adam(ps, lr=0.05),
        "Adam, L2 (coupled)": lambda ps: Adam(ps, lr=0.05, weight_decay=0.1),
        "AdamW (decoupled)": lambda ps: AdamW(ps, lr=0.05, weight_decay=0.1),
    }
    curves = {}
    print(f"{'':>20} {'learned a':>12} {'learned b':>12} {'data loss':>12}")
    for label, make in runs.items():
        history, _ = fit_line(make, 600)
        loss, a, b = history[-1]
        print(f"{label:>20} {a:>12.6f} {b:>12.6f} {loss:>12.6f}")
        curves[label] = (range(1, len(history) + 1), [h[2] for h in history])
    ridge = B_TRUE * 2 / (2 + 0.1)
    print(
        f"Coupled L2 settles at the ridge solution (b_ridge ~ b_true * 2/(2 + wd) = {ridge:.3f})."
    )
    print("Decoupled decay removes lr * wd * theta every step whatever the gradient's scale, so")
    print("it pulls harder here and is still approaching its balance point (see weight_decay.png).")
    save_curves(
        out / "weight_decay.png",
        curves,
        title="learned b: no decay vs coupled L2 vs decoupled (wd=0.1)",
        xlabel="iteration",
        ylabel="b",
    )


def _lr_trace(
    lr: float,
    make_scheduler: Callable[[torch.optim.Optimizer], LRScheduler],
    epochs: int = 10,
    change_at: tuple[int, float] | None = None,
) -> list[float]:
    """The seed's loop: step the optimizer, record the lr, step the scheduler."""
    model = nn.Linear(4, 3)
    optimizer = Adam(model.parameters(), lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for epoch in range(epochs):
        if change_at is not None and epoch == change_at[0]:
            set_lr(optimizer, change_at[1])  # by hand, mid-run
        optimizer.step()
        lrs.append(get_lr(optimizer)[0])
        scheduler.step()
    return lrs


def _compare_with_torch(name: str, ours: list[float], theirs: list[float]) -> None:
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))
    verdict = "bit-identical" if ours == theirs else f"max relative difference {worst:.1e}"
    print(f"  vs torch.optim.lr_scheduler.{name} on the same loop: {verdict}")


def section_learning_rates(out: Path) -> None:
    _heading(
        5, "Learning-rate schedules, plotted  (seed: 'learning rate', 'scheduler', 'change lr')"
    )
    torch_lr = torch.optim.lr_scheduler
    # The seed's two schedules as adamkit specs, driven by adamkit.Scheduler on a real optimizer.
    seed_schedules = [
        ("lambda_lr.png", "lambda(0.67 ** epoch)", "LambdaLR", lambda e: 0.67**e),
        ("multiplicative_lr.png", "multiplicative(0.69)", "MultiplicativeLR", lambda e: 0.69),
    ]
    traces = {}
    for filename, spec, torch_name, fn in seed_schedules:
        print(f"\nadamkit.Adam(lr=100) + adamkit.Scheduler(optimizer, {spec!r}):")
        lrs = _lr_trace(100, functools.partial(Scheduler, schedule=spec))
        torch_scheduler = functools.partial(getattr(torch_lr, torch_name), lr_lambda=fn)
        _compare_with_torch(torch_name, lrs, _lr_trace(100, torch_scheduler))
        plot_schedule(spec, out / filename, lr=100, steps=10, title=f"{spec}, lr=100")
        traces[spec] = lrs

    # Changing the learning rate: the seed restarts with lr=120; we also set it by hand at
    # epoch 5 with adamkit.set_lr. The Scheduler is rebased, so the schedule carries on from 50.
    restart = _lr_trace(120, lambda o: Scheduler(o, "multiplicative(0.69)"))
    by_hand = _lr_trace(100, lambda o: Scheduler(o, "multiplicative(0.69)"), change_at=(5, 50.0))
    print("\nThe seed restarts the schedule with lr=120: multiplicative(0.69) from lr=120")
    print("  lr:", ", ".join(f"{v:.4g}" for v in restart))
    print("\nChanging the learning rate by hand: adamkit.set_lr(optimizer, 50) at epoch 5")
    print(text_chart(by_hand, label="multiplicative(0.69) from lr=100, set to 50 at epoch 5"))
    print("  lr:", ", ".join(f"{v:.4g}" for v in by_hand))
    save_curves(
        out / "change_lr.png",
        {
            "lambda(0.67 ** epoch) from lr=100": (range(10), traces["lambda(0.67 ** epoch)"]),
            "multiplicative(0.69) from lr=120": (range(10), restart),
            "multiplicative(0.69), set_lr(50) at epoch 5": (range(10), by_hand),
        },
        title="Changing the learning rate",
        xlabel="epoch",
        ylabel="lr",
        markers=True,
    )

    # Beyond the seed: the schedules used to train transformers, as one-line specs.
    print("\nWarmup and decay schedules (lr 3e-4, 2000 steps):")
    plot_schedule(
        [
            "warmup(200) + cosine(1800, floor=0.1)",
            "wsd(200, 1400, 400, floor=0.1)",
            "warmup(200) + inverse_sqrt(200)",
            "one_cycle(2000)",
        ],
        out / "warmup_schedules.png",
        lr=3e-4,
        steps=2000,
    )


def run_tour(out: str | Path = "adamkit-tour") -> Path:
    """Run every section; write the plots under ``out``; return that folder."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    section_linear_regression(out)
    section_from_scratch()
    section_radam(out)
    section_weight_decay(out)
    section_learning_rates(out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"\nPlots written to {out.resolve()}/: {', '.join(pngs)}")
    print(f"Tour finished in {time.perf_counter() - start:.1f} s.")
    return out
