"""An algorithm added the way docs/adding-an-algorithm.md says, in this file alone: a NumPy
reference, a row of the table, a rule and its class. It keeps a third state tensor (a slow EMA
of the gradient mixed into the update, AdEMAMix without its schedulers) and two hyperparameters
of its own, and has no fused kernel yet. Everything the shared code promises then holds for it:
the eager paths equal the reference, state included; bf16 and 8-bit state store all three
states compactly, with a rounding stream of its own for the third; checkpoints resume exactly."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from adamkit.kernels import _abi
from adamkit.optim._algorithms import ALGORITHMS, Algorithm, noise
from adamkit.optim._base import AdamFamily, ParamsT, group_defaults
from adamkit.optim._core import Bucket, Hyper, bias_corrections, prepare_grads, update_moments
from adamkit.optim._paths import TensorOps


def slow_mix_reference(
    theta: np.ndarray,
    grad: np.ndarray,
    state: dict[str, Any] | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    alpha: float = 5.0,
    beta3: float = 0.9999,
    maximize: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """theta -= lr (m / (1 - beta1^t) + alpha m_slow) / (sqrt(v / (1 - beta2^t)) + eps)."""
    beta1, beta2 = betas
    s = state or {k: np.zeros_like(theta) for k in ("exp_avg", "exp_avg_sq", "exp_avg_slow")}
    t = s.get("step", 0) + 1
    g = (-grad if maximize else grad) + weight_decay * theta
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    slow = beta3 * s["exp_avg_slow"] + (1 - beta3) * g
    denom = np.sqrt(v) / np.sqrt(1 - beta2**t) + eps
    theta = theta - lr * (m / (1 - beta1**t) + alpha * slow) / denom
    return theta, {"step": t, "exp_avg": m, "exp_avg_sq": v, "exp_avg_slow": slow}


ROW = Algorithm(
    "SlowMix",
    states=("exp_avg", "exp_avg_sq", "exp_avg_slow"),
    unsigned=frozenset({"exp_avg_sq"}),
    reference=slow_mix_reference,
    own=("alpha", "beta3"),
)


def slow_mix_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq, slow = (b.state[k] for k in ROW.states)
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)
    ops.lerp_(slow, grads, 1 - h.own["beta3"])
    denom = ops.sqrt(exp_avg_sq)
    ops.div_(denom, [bc**0.5 for bc in bias_corrections(h.beta2, steps)])
    ops.add_scalar_(denom, h.eps)
    ops.addcdiv_(b.params, exp_avg, denom, [-h.lr / bc for bc in bias_corrections(h.beta1, steps)])
    ops.addcdiv_(b.params, slow, denom, -h.lr * h.own["alpha"])


class SlowMix(AdamFamily):
    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 5.0,
        beta3: float = 0.9999,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ROW
    _rule = slow_mix_rule


@pytest.fixture(autouse=True)
def in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The row joins the table, as a new row of _algorithms.py would."""
    monkeypatch.setitem(ALGORITHMS, "SlowMix", ROW)


KWARGS = {"lr": 1e-2, "betas": (0.8, 0.95), "alpha": 2.0, "beta3": 0.99, "weight_decay": 0.1}


def _grads(shapes: list[tuple[int, ...]], steps: int) -> list[list[Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)
    ]


@pytest.mark.parametrize("path", [{"foreach": True}, {"foreach": False}, {}])
def test_every_eager_path_equals_the_reference_state_included(path: dict[str, bool]) -> None:
    shapes = [(7, 5), (13,), ()]
    ps = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    thetas = [p.detach().numpy().copy() for p in ps]
    states: list[Any] = [None] * len(ps)
    opt = SlowMix(ps, **KWARGS, maximize=True, **path)
    assert opt.execution_path() in ("foreach", "forloop")  # no kernel: never "fused"
    for grads in _grads(shapes, 40):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            math = {**KWARGS, "maximize": True}
            thetas[i], states[i] = slow_mix_reference(thetas[i], g.numpy(), states[i], **math)
    for p, theta, ref in zip(ps, thetas, states, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-12, atol=1e-12)
        for key in ROW.states:
            np.testing.assert_allclose(opt.state[p][key].numpy(), ref[key], rtol=1e-12, atol=1e-14)
        assert opt.state[p]["step"].item() == ref["step"]
    with pytest.raises(RuntimeError, match=r"fused=True\): no fused kernel steps SlowMix"):
        SlowMix(ps, fused=True)


def test_its_own_hyperparameters_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SlowMix([torch.zeros(2, requires_grad=True)], alpha=-1.0)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_low_precision_state_keeps_all_three_states_compact(precision: str) -> None:
    assert noise("exp_avg_slow") == (_abi.SALT_EXTRA, True)  # a stream of its own
    shapes = [(64, 80), (300,)]  # 8-bit: the first has blocks, the second stays fp32
    grads = _grads(shapes, 30)
    finals = {}
    for store in ("fp32", precision):
        torch.manual_seed(3)
        ps = [torch.randn(s, requires_grad=True) for s in shapes]
        opt = SlowMix(ps, **KWARGS, state_precision=store)
        for step in grads:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.float()
            opt.step()
        finals[store] = ([p.detach().clone() for p in ps], opt)
    low, opt = finals[precision]
    full, _ = finals["fp32"]
    bound = 0.2 if precision == "8bit" else 0.02
    for a, b in zip(low, full, strict=True):
        assert ((a - b).abs() / (KWARGS["lr"] * 30)).max() <= bound
    stored = opt.state[opt.param_groups[0]["params"][0]]
    for key in ROW.states:
        want = torch.uint8 if precision == "8bit" else torch.bfloat16
        assert stored[key].dtype == want, key
        assert (f"{key}_scale" in stored) == (precision == "8bit")


def test_a_checkpoint_resumes_exactly_in_another_precision_and_back() -> None:
    shapes = [(64, 80), (300,)]
    grads = _grads(shapes, 20)

    def run(ps: list[Tensor], opt: SlowMix, steps: list[list[Tensor]]) -> None:
        for step in steps:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.float()
            opt.step()

    torch.manual_seed(4)
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    straight = SlowMix(ps, **KWARGS, state_precision="8bit")
    run(ps, straight, grads)
    first = SlowMix(qs, **KWARGS, state_precision="8bit")
    run(qs, first, grads[:10])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = SlowMix(qs, **KWARGS, state_precision="8bit")
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(qs, resumed, grads[10:])
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)
    # Into full precision: the three states decode.
    full = SlowMix([q.detach().clone().requires_grad_() for q in qs], **KWARGS)
    full.load_state_dict(resumed.state_dict())
    entry = next(iter(full.state.values()))
    assert {k: entry[k].dtype for k in ROW.states} == dict.fromkeys(ROW.states, torch.float32)
