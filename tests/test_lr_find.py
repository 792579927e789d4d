"""adamkit.lr_find: the sweep, its suggestions and plot, and an exact restore of the model,
the optimizer and every random number generator."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import adamkit

from .artifacts import assert_real_png


def _problem(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1)
    )
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    data = []
    for _ in range(10):
        x = torch.randn(32, 4, generator=g)
        data.append((x, x @ w + 0.01 * torch.randn(32, 1, generator=g)))
    return model, data


def _rng_draws() -> tuple[float, float, float]:
    return torch.rand(()).item(), random.random(), float(np.random.rand())


def test_restores_model_optimizer_and_rngs_bit_for_bit() -> None:
    model, data = _problem()
    optimizer = adamkit.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for x, y in data[:3]:  # some optimizer state to protect
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    model.eval()
    before_model = copy.deepcopy(model.state_dict())
    before_opt = copy.deepcopy(optimizer.state_dict())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected_draws = _rng_draws()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)

    result = adamkit.lr_find(
        model, nn.functional.mse_loss, data, optimizer, steps=40, progress=False
    )

    assert len(result.lrs) >= 5
    assert _rng_draws() == expected_draws
    assert not model.training
    for key, value in before_model.items():
        assert torch.equal(model.state_dict()[key], value), key  # buffers included
    after_opt = optimizer.state_dict()
    assert after_opt["param_groups"] == before_opt["param_groups"]
    for index, entry in before_opt["state"].items():
        for key, value in entry.items():
            assert torch.equal(after_opt["state"][index][key], value), (index, key)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_sweep_suggestions_and_divergence() -> None:
    model, data = _problem()
    result = adamkit.lr_find(
        model, nn.functional.mse_loss, data, start_lr=1e-5, end_lr=100.0, steps=80, progress=False
    )
    assert result.stopped_early  # lr=100 diverges long before the end
    lrs = np.asarray(result.lrs)
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e7) / 79)  # exponential steps
    assert set(result.suggestions) == {"steepest", "valley", "minimum/10"}
    minimum_lr = result.lrs[int(np.argmin(result.smoothed))]
    assert result.suggestions["minimum/10"] == pytest.approx(minimum_lr / 10)
    for lr in result.suggestions.values():
        assert 1e-3 <= lr <= minimum_lr  # on the descent, not in the noisy start
    # Adam on this regression trains well between 1e-3 and 1e-1: the valley lands there.
    assert 1e-4 <= result.suggestion <= 0.3


def test_linear_mode_and_groups_keep_their_ratio() -> None:
    model, data = _problem()
    groups = [
        {"params": model[0].parameters(), "lr": 1.0},
        {"params": [*model[1].parameters(), *model[4].parameters()], "lr": 0.5},
    ]
    optimizer = adamkit.Adam(groups)
    seen: list[list[float]] = []
    optimizer.register_step_post_hook(lambda opt, *_: seen.append(adamkit.get_lr(opt)))
    result = adamkit.lr_find(
        model,
        nn.functional.mse_loss,
        data,
        optimizer,
        start_lr=1e-4,
        end_lr=1e-2,
        steps=20,
        mode="linear",
        progress=False,
    )
    assert np.allclose(np.diff(result.lrs), (1e-2 - 1e-4) / 19)
    assert all(b == pytest.approx(a / 2) for a, b in seen)
    assert adamkit.get_lr(optimizer) == [1.0, 0.5]


def test_plot_marks_the_suggestions_and_progress_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = _problem()
    result = adamkit.lr_find(model, nn.functional.mse_loss, data, steps=30, end_lr=1.0)
    err = capsys.readouterr().err
    assert "lr_find [" in err and ("30/30" in err or "diverged" in err)
    path = result.plot(tmp_path / "lr_find.png")
    assert_real_png(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, r"need 0 < start_lr < end_lr"),
        ({"steps": 2}, r"steps=2 is invalid"),
        ({"mode": "cosine"}, r"mode='cosine' is invalid"),
        ({"smoothing": 1.0}, r"smoothing=1.0 is invalid"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    model, data = _problem()
    with pytest.raises(ValueError, match=message):
        adamkit.lr_find(model, nn.functional.mse_loss, data, progress=False, **kwargs)  # type: ignore[arg-type]
