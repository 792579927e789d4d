"""AdEMAMix against its peer package and its paper: the registry's cases already hold every
eager path equal to the NumPy reference (tests/test_parity.py); here pytorch-optimizer's
AdEMAMix, the schedulers' shape, and its own bad input."""

from __future__ import annotations

import math

import pytest
import torch

import adamkit
from adamkit.optim.ademamix import ademamix_schedules

from .problems import assert_fused_equals_eager

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
def test_matches_pytorch_optimizer_over_300_steps(decoupled: bool, foreach: bool) -> None:
    """The same run in both, state included. Conventions mapped: its ``betas`` is (beta1,
    beta2, beta3), its one warmup length ``t_alpha_beta3`` is our ``t_alpha`` and ``t_beta3``,
    its ``weight_decouple`` our ``decoupled_weight_decay``. Both in float64; they differ only by
    operation order (it forms m/bc1 + alpha m_slow before dividing, we divide twice)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(17, 9), (33,), ()]
    ours_p = [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]
    peer_p = [p.detach().clone().requires_grad_() for p in ours_p]
    hyper = {"lr": 3e-3, "alpha": 4.0, "weight_decay": 0.1, "eps": 1e-8}
    ours = adamkit.AdEMAMix(
        ours_p, betas=(0.8, 0.99), beta3=0.995, t_alpha=100, t_beta3=150, foreach=foreach,
        decoupled_weight_decay=decoupled, **hyper,
    )  # fmt: skip
    peer = pytorch_optimizer.AdEMAMix(
        peer_p, betas=(0.8, 0.99, 0.995), t_alpha_beta3=None, weight_decouple=decoupled, **hyper
    )
    # pytorch-optimizer has one warmup for both; ours are separate: drive its schedule by hand
    # with ours (its group values are read each step), so both warmups are exercised.
    for step in range(1, 301):
        grads = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
        for p, q, grad in zip(ours_p, peer_p, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        alpha_t, beta3_t = ademamix_schedules(step, 0.8, 4.0, 0.995, 100, 150)
        peer.param_groups[0]["alpha"], peer.param_groups[0]["betas"] = alpha_t, (0.8, 0.99, beta3_t)
        ours.step()
        peer.step()
    for p, q in zip(ours_p, peer_p, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_slow"):
            torch.testing.assert_close(
                ours.state[p][key], peer.state[q][key], rtol=1e-12, atol=1e-14
            )


def test_the_peer_warmup_is_ours_with_one_length() -> None:
    """pytorch-optimizer's schedulers equal ours when both lengths are its one."""
    for step in (1, 7, 50, 99, 100, 101, 400):
        alpha_t, beta3_t = ademamix_schedules(step, 0.9, 5.0, 0.9999, 100, 100)
        assert alpha_t == pytorch_optimizer.AdEMAMix.schedule_alpha(100, step, 5.0)
        assert beta3_t == pytorch_optimizer.AdEMAMix.schedule_beta3(100, step, 0.9, 0.9999)


def test_schedules_follow_the_paper() -> None:
    """alpha_t rises linearly to alpha; beta3_t starts at beta1's half-life and its half-life
    grows linearly to beta3's at t_beta3 (the paper's equation 3), then stays."""

    def half_life(beta: float) -> float:
        return math.log(0.5) / math.log(beta)

    beta1, beta3, t = 0.9, 0.9999, 1000
    assert ademamix_schedules(0, beta1, 5.0, beta3, t, t) == (0.0, pytest.approx(beta1))
    assert ademamix_schedules(250, beta1, 5.0, beta3, t, t)[0] == 1.25
    lives = [half_life(ademamix_schedules(s, beta1, 5.0, beta3, t, t)[1]) for s in (0, 500, 1000)]
    assert lives[1] == pytest.approx((lives[0] + lives[2]) / 2, rel=1e-9)
    assert ademamix_schedules(5000, beta1, 5.0, beta3, t, t) == (5.0, beta3)
    assert ademamix_schedules(1, beta1, 5.0, beta3, 0, 0) == (5.0, beta3)  # no warmup


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta3": 1.0}, r"Invalid beta3 value: 1.0 \(beta3 must be in \[0, 1\)\)"),
        ({"beta3": -0.1}, "Invalid beta3 value: -0.1"),
        ({"alpha": -1.0}, "Invalid alpha value: -1.0"),
        ({"t_alpha": -5}, "Invalid t_alpha value: -5"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adamkit.AdEMAMix([torch.zeros(3, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "8bit"])
def test_the_fused_kernel_equals_the_multi_tensor_path(precision: str) -> None:
    """The C kernel's AdEMAMix loop (one division where the rule takes two) against the rule,
    warmups and decoupled decay included, state included; the default path is the kernel."""
    assert_fused_equals_eager(
        adamkit.AdEMAMix,
        {"lr": 1e-2, "weight_decay": 0.1, "t_alpha": 20, "t_beta3": 30, "beta3": 0.999},
        precision,
    )
