"""ADOPT against its peer package and its paper: the registry's cases already hold every eager
path equal to the NumPy reference (tests/test_parity.py); here pytorch-optimizer's ADOPT (the
authors' algorithm), the first step, the clipping, and its own bad input."""

from __future__ import annotations

import pytest
import torch

import adamkit

from .problems import assert_fused_equals_eager

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


@pytest.mark.parametrize(
    "decay",
    [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True}],
    ids=["none", "coupled", "decoupled"],
)
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
def test_equals_pytorch_optimizer_bit_for_bit_over_300_steps(
    decay: dict[str, float], foreach: bool
) -> None:
    """The same operations in the same order: equal bits, state included (float64 and
    float32). Conventions mapped: its ``weight_decouple`` is our ``decoupled_weight_decay``,
    its default ``clip_lambda`` (``step ** 0.25``) our default ``clip_exponent``."""
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(0)
        shapes = [(17, 9), (33,), ()]
        ours_p = [torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in shapes]
        peer_p = [p.detach().clone().requires_grad_() for p in ours_p]
        ours = adamkit.ADOPT(ours_p, lr=3e-3, foreach=foreach, **decay)
        peer = pytorch_optimizer.ADOPT(
            peer_p,
            lr=3e-3,
            weight_decay=decay.get("weight_decay", 0.0),
            weight_decouple=bool(decay.get("decoupled_weight_decay")),
            foreach=foreach,
        )
        for _ in range(300):
            for p, q in zip(ours_p, peer_p, strict=True):
                grad = torch.randn(p.shape, dtype=dtype, generator=g)
                p.grad, q.grad = grad.clone(), grad.clone()
            ours.step()
            peer.step()
        for p, q in zip(ours_p, peer_p, strict=True):
            assert torch.equal(p, q)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(ours.state[p][key], peer.state[q][key]), key


def test_the_first_step_only_records_the_second_moment() -> None:
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = adamkit.ADOPT([p], lr=0.1)
    p.grad = torch.tensor([0.5, -4.0, 0.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(opt.state[p]["exp_avg_sq"], torch.tensor([0.25, 16.0, 0.0]))
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(3))


def test_the_normalised_gradient_is_clipped_to_t_to_the_quarter() -> None:
    """A gradient 1000 times its history is clipped to 2**0.25 at step 2 (the momentum then
    holds (1 - beta1) times the bound); with clip_exponent=2 the bound is 4 and still clips."""
    for exponent, bound in ((0.25, 2**0.25), (2.0, 4.0)):
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = adamkit.ADOPT([p], lr=0.1, clip_exponent=exponent)
        for grad in (1.0, 1000.0):
            p.grad = torch.tensor([grad], dtype=torch.float64)
            opt.step()
        assert opt.state[p]["exp_avg"].item() == pytest.approx(0.1 * bound)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_exponent": -1.0}, "Invalid clip_exponent value: -1.0"),
        ({"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
        ({"eps": -1e-6}, "Invalid epsilon value: -1e-06"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adamkit.ADOPT([torch.zeros(3, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "8bit"])
def test_the_fused_kernel_equals_the_multi_tensor_path(precision: str) -> None:
    """The C kernel's ADOPT loops (its first step a loop of its own) against the rule, state
    included; the default path is the kernel."""
    assert_fused_equals_eager(
        adamkit.ADOPT, {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}, precision
    )
