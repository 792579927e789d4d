"""adamkit.Telemetry: per-step, per-group records that equal what the optimizer did, in JSONL and
CSV, RAdam's rectification, skipped steps, and the plot command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import adamkit
from adamkit.optim.ademamix import ademamix_schedules
from adamkit.tools import read_telemetry

from .artifacts import assert_real_png, run


def _train(opt: torch.optim.Optimizer, model: nn.Module, steps: int, bad_step: int = -1) -> None:
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 3, generator=g)
        opt.zero_grad()
        (model(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
        if step == bad_step:
            next(model.parameters()).grad[0, 0] = float("nan")  # type: ignore[index]
        opt.step()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_records_equal_what_the_optimizer_did(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.01), lr=0.05)
    path = tmp_path / f"t{suffix}"
    with adamkit.Telemetry(opt, path) as telemetry:
        _train(opt, model, 4)
        # The last step by hand, to compare with the record.
        x = torch.randn(16, 3)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        grads = [[p.grad.clone() for p in g["params"]] for g in opt.param_groups]  # type: ignore[union-attr]
        before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
        opt.step()
    records = read_telemetry(path)
    assert records == telemetry.records if suffix == ".jsonl" else len(records) == 10
    last = [r for r in records if r["step"] == 4]
    assert [r["name"] for r in last] == ["decay", "no_decay"]
    for record, group, g, b in zip(last, opt.param_groups, grads, before, strict=True):
        norm = lambda ts: torch.linalg.vector_norm(torch.stack([t.norm() for t in ts])).item()  # noqa: E731
        assert record["lr"] == pytest.approx(0.05)
        assert record["grad_norm"] == pytest.approx(norm(g), rel=1e-5)
        update = [p.detach() - q for p, q in zip(group["params"], b, strict=True)]
        assert record["update_norm"] == pytest.approx(norm(update), rel=1e-5)
        assert record["update_ratio"] == pytest.approx(
            norm(update) / norm(group["params"]), rel=1e-5
        )
        assert record["skipped"] is False and record["rho_t"] is None


def test_radam_rectification_and_skipped_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = adamkit.RAdam(model.parameters(), lr=0.01, nonfinite="skip")
    telemetry = adamkit.Telemetry(opt, tmp_path / "radam.jsonl", every=2)
    _train(opt, model, 12, bad_step=4)
    telemetry.close()
    records = telemetry.records
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8, 10]
    skipped = {r["step"]: r["skipped"] for r in records}
    assert skipped[4] is True and not any(v for k, v in skipped.items() if k != 4)
    rectified = [r["rectified"] for r in records]
    assert rectified[0] is False and rectified[-1] is True  # rho_t passes 5 at step 6
    assert records[-1]["rho_t"] == pytest.approx(adamkit.radam_rectification(10, 0.999).rho)


def test_ademamix_warmups_are_recorded_and_plotted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = adamkit.AdEMAMix(model.parameters(), lr=0.01, alpha=4.0, t_alpha=10, t_beta3=20)
    with adamkit.Telemetry(opt, tmp_path / "ademamix.csv") as telemetry:
        _train(opt, model, 30)
    alphas = [r["alpha_t"] for r in telemetry.records]
    betas = [r["beta3_t"] for r in telemetry.records]
    # the record of step k is taken after it: the optimizer's state is at step k + 1
    assert alphas[:3] == pytest.approx([0.4, 0.8, 1.2]) and alphas[-1] == 4.0
    first = ademamix_schedules(1, 0.9, 4.0, 0.9999, 10, 20)[1]  # half-life 6.6 -> 353 steps
    assert betas[0] == first and 0.99 < first < 0.9999 and betas[-1] == 0.9999
    assert betas == sorted(betas)  # it only grows
    out = adamkit.plot_telemetry(tmp_path / "ademamix.csv", tmp_path / "ademamix.png")
    assert_real_png(out)


@pytest.mark.parametrize("package", [False, True], ids=["adamkit", "schedulefree"])
def test_schedule_free_warmup_and_average_weight_are_recorded(
    tmp_path: Path, package: bool
) -> None:
    """The lr a step used (warmed up) and c_{t+1}: with r = 0 and a constant lr after the
    warmup, the weights are equal from then on and c_{t+1} falls as 1/(t - warmup + const)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    if package:
        schedulefree = pytest.importorskip("schedulefree")
        opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=5)
        opt.train()
    else:
        opt = adamkit.ScheduleFreeAdamW(model.parameters(), lr=0.01, warmup_steps=5)
    with adamkit.Telemetry(opt, tmp_path / "sf.jsonl") as telemetry:
        _train(opt, model, 30)
    lrs = [r["lr"] for r in telemetry.records]
    assert lrs[:5] == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.01]) and lrs[-1] == 0.01
    weights = [r["average_weight"] for r in telemetry.records]
    assert weights[0] == 1.0 and weights == sorted(weights, reverse=True)
    squares = sum(lr * lr for lr in lrs)  # w_t = lr_max^2: the sum of the squares so far
    assert weights[-1] == pytest.approx(0.01**2 / squares)
    out = adamkit.plot_telemetry(tmp_path / "sf.jsonl", tmp_path / "sf.png")
    assert_real_png(out)


def test_plot_telemetry_command(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = adamkit.RAdam(model.parameters(), lr=0.01)
    with adamkit.Telemetry(opt, tmp_path / "t.csv"):
        _train(opt, model, 20)
    png = tmp_path / "t.png"
    result = run(
        [
            sys.executable,
            "-m",
            "adamkit",
            "plot-telemetry",
            str(tmp_path / "t.csv"),
            "-o",
            str(png),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert_real_png(png)
    missing = run(
        [sys.executable, "-m", "adamkit", "plot-telemetry", str(tmp_path / "none.csv")], tmp_path
    )
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_bad_arguments(tmp_path: Path) -> None:
    opt = adamkit.Adam([torch.zeros(1)])
    with pytest.raises(ValueError, match=r"must end in \.jsonl or \.csv"):
        adamkit.Telemetry(opt, tmp_path / "t.txt")
    with pytest.raises(ValueError, match=r"every=0 is invalid"):
        adamkit.Telemetry(opt, tmp_path / "t.csv", every=0)
