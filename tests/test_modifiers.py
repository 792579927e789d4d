"""``cautious=True`` and ``update_clipping=True`` (and ``StableAdamW``), against peer packages.

The registry's cases already hold every algorithm with these options equal to the NumPy
reference (whose wrapper applies them to any algorithm's update) on the for-loop and
multi-tensor paths; here: pytorch-optimizer's ADOPT(cautious=True) and StableAdamW, the
options' bookkeeping, where they are refused, and the differentiable path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import adamkit

from .artifacts import assert_real_png

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def _pair(dtype: torch.dtype, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ours = [torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in [(17, 9), (33,)]]
    return ours, [p.detach().clone().requires_grad_() for p in ours]


def _train(ours: Any, peer: Any, ours_p: list, peer_p: list, steps: int, spikes: bool) -> list:  # type: ignore[type-arg]
    """Both optimizers on the same gradients; with ``spikes``, every 50th step's gradient is
    30 times larger (a loss spike). Returns our update_stats after each step."""
    g = torch.Generator().manual_seed(1)
    seen = []
    for t in range(steps):
        for p, q in zip(ours_p, peer_p, strict=True):
            grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
            grad = grad * 30 if spikes and t % 50 == 20 else grad
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        peer.step()
        seen.append(ours.update_stats[0])
    return seen


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
def test_cautious_adopt_equals_pytorch_optimizer(foreach: bool, decoupled: bool) -> None:
    """pytorch-optimizer masks ADOPT's momentum by the sign agreement with the normalised
    gradient (whose sign is the gradient's) and scales by n / (kept + 1): the same update."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        ours_p, peer_p = _pair(dtype, 0)
        kwargs = {"lr": 3e-3, "weight_decay": 0.1}
        ours = adamkit.ADOPT(
            ours_p, cautious=True, foreach=foreach, decoupled_weight_decay=decoupled, **kwargs
        )
        peer = pytorch_optimizer.ADOPT(
            peer_p, cautious=True, weight_decouple=decoupled, foreach=foreach, **kwargs
        )
        seen = _train(ours, peer, ours_p, peer_p, 300, spikes=False)
        for p, q in zip(ours_p, peer_p, strict=True):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)
            torch.testing.assert_close(ours.state[p]["exp_avg"], peer.state[q]["exp_avg"])
        kept = [s["kept_fraction"] for s in seen]
        assert kept[0] == 0.0  # ADOPT's first step makes no update: nothing kept
        assert all(0.3 < k < 1.0 for k in kept[5:])  # some of each update disagrees


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
def test_stable_adamw_equals_pytorch_optimizer_and_clips_the_spikes(foreach: bool) -> None:
    """Over 300 steps with a 30x gradient spike every 50: equal to pytorch-optimizer's
    StableAdamW (its debiased betas are Adam's bias correction, rounded differently), and the
    spikes are the steps whose lr is cut."""
    ours_p, peer_p = _pair(torch.float64, 2)
    ours = adamkit.StableAdamW(ours_p, lr=3e-3, foreach=foreach)
    peer = pytorch_optimizer.StableAdamW(peer_p, lr=3e-3, kahan_sum=False, foreach=foreach)
    seen = _train(ours, peer, ours_p, peer_p, 300, spikes=True)
    for p, q in zip(ours_p, peer_p, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    factors = [s["clip_factor"] for s in seen]
    spikes = [t for t in range(300) if t % 50 == 20]
    # At a spike v_hat takes in (1 - beta2) of the 900x g^2: RMS ~ 30 / sqrt(1 + 9) ~ 5.
    assert all(factors[t] < 0.3 for t in spikes)
    assert all(factors[t] > 0.9 for t in range(300) if t not in spikes)
    # Without the clipping the same run ends elsewhere: the option is not a no-op.
    plain_p, other_p = _pair(torch.float64, 2)
    plain = adamkit.AdamW(plain_p, lr=3e-3, betas=(0.9, 0.99), foreach=foreach)
    _train(plain, adamkit.AdamW(other_p, lr=3e-3), plain_p, other_p, 300, spikes=True)
    assert not torch.allclose(plain_p[0], ours_p[0], rtol=1e-3)


def test_stable_adamw_is_adamw_with_update_clipping() -> None:
    a, b = _pair(torch.float32, 3)
    named = adamkit.StableAdamW(a, lr=1e-2)
    spelled = adamkit.AdamW(b, lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2, update_clipping=True)
    _train(named, spelled, a, b, 30, spikes=True)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)
    assert named.param_groups[0]["update_clipping"] is True


def test_the_fused_kernel_steps_the_options_on_full_precision_cpu_tensors() -> None:
    """By default (and with fused=True) the C kernel steps them in two passes, equal to the
    multi-tensor path (to 1e-10 in float64); low-precision state is stepped on the multi-tensor
    path, and fused=True there says why."""
    for name, kwargs in [
        ("AdamW", {"cautious": True}),
        ("NAdam", {"update_clipping": True, "cautious": True, "weight_decay": 0.1}),
        ("ADOPT", {"cautious": True, "maximize": True}),
        ("Adam", {"amsgrad": True, "update_clipping": True, "weight_decay": 0.1}),
    ]:
        g = torch.Generator().manual_seed(4)
        shapes = [(300, 300), (70_000,), (7,), (0,)]  # two chunks, a tail, an empty tensor
        ps = [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]
        qs = [p.detach().clone().requires_grad_() for p in ps]
        fused = getattr(adamkit, name)(ps, lr=1e-2, **kwargs)
        eager = getattr(adamkit, name)(qs, lr=1e-2, foreach=True, **kwargs)
        assert fused.execution_path() == "fused"
        for t in range(20):
            for p, q in zip(ps, qs, strict=True):
                grad = torch.randn(p.shape, dtype=p.dtype, generator=g) * (20 if t == 10 else 1)
                p.grad, q.grad = grad.clone(), grad
            fused.step()
            eager.step()
            for ours, theirs in zip(fused.update_stats, eager.update_stats, strict=True):
                for key, value in theirs.items():
                    assert ours[key] == (value if value is None else pytest.approx(value))
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-13)
    p = torch.ones(5000, requires_grad=True)
    low = adamkit.Adam([p], cautious=True, state_precision="bf16")
    p.grad = torch.ones(5000)
    low.step()  # the multi-tensor path
    forced = adamkit.Adam([p], cautious=True, state_precision="bf16", fused=True)
    with pytest.raises(RuntimeError, match="full-precision tensors on the CPU only"):
        forced.step()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: adamkit.Adamax([{"params": [p], "update_clipping": True}]), "no Adam-style"),
        (lambda p: adamkit.ADOPT([{"params": [p], "update_clipping": True}]), "no Adam-style"),
        (
            lambda p: adamkit.ScheduleFreeAdamW([{"params": [p], "cautious": True}]),
            "not a gradient step",
        ),
        (lambda p: adamkit.Adam([p], cautious="yes"), "cautious must be True or False"),
    ],
    ids=["adamax-clipping", "adopt-clipping", "schedulefree-cautious", "not-a-bool"],
)
def test_where_an_option_does_not_apply_it_is_refused(make: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make(torch.ones(2, requires_grad=True))


def test_cautious_keeps_only_descending_elements() -> None:
    """One Adam step from zero state: the update is -lr sign(g) (m/sqrt(v) = g/|g|), all
    descending, so all are kept and scaled by n / (n + 1). On the next step, elements whose
    gradient flipped sign and whose momentum still points the old way are zeroed."""
    p = torch.zeros(4, requires_grad=True)
    opt = adamkit.Adam([p], lr=0.1, cautious=True)
    p.grad = torch.tensor([1.0, -2.0, 3.0, -4.0])
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(p.grad) * 4 / 5)
    before = p.detach().clone()
    p.grad = torch.tensor([-0.01, 2.0, -0.01, -4.0])  # 0 and 2: tiny flips, momentum wins
    opt.step()
    moved = p.detach() - before
    assert moved[0] == 0 and moved[2] == 0 and moved[1] < 0 and moved[3] > 0
    assert opt.update_stats[0]["kept_fraction"] == 0.5


def test_the_differentiable_path_carries_the_masked_update() -> None:
    """differentiable=True with cautious: the step is in the graph (the mask, a comparison,
    and the clipping factor are constants of it), so a hypergradient reaches lr."""
    w = torch.randn(5, requires_grad=True)
    lr = torch.tensor(0.1, requires_grad=True)
    x = w.clone()  # a non-leaf parameter, as torch's differentiable optimizers take
    x.grad = torch.randn(5)
    opt = adamkit.Adam([x], lr=lr, differentiable=True, cautious=True, update_clipping=True)
    opt.step()
    (x * x).sum().backward()
    assert lr.grad is not None and lr.grad != 0


def test_telemetry_records_and_plots_the_options(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = adamkit.AdamW(model.parameters(), lr=1e-2, cautious=True, update_clipping=True)
    with adamkit.Telemetry(opt, tmp_path / "t.csv") as telemetry:
        for step in range(20):
            x = torch.randn(16, 8)
            opt.zero_grad()
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean() * (50 if step == 10 else 1)
            loss.backward()
            opt.step()
    kept = [r["kept_fraction"] for r in telemetry.records]
    factors = [r["clip_factor"] for r in telemetry.records]
    assert all(0 < k <= 1 for k in kept) and all(0 < f <= 1 for f in factors)
    assert factors[10] < 0.5 < min(factors[:10])  # the spike's step is clipped
    assert_real_png(adamkit.plot_telemetry(tmp_path / "t.csv", tmp_path / "t.png"))


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda ps: adamkit.Adamax(ps), "update_clipping"),
        (lambda ps: adamkit.ADOPT(ps), "update_clipping"),
        (lambda ps: adamkit.ScheduleFreeAdamW(ps), "cautious"),
    ],
    ids=["adamax", "adopt", "schedulefree"],
)
def test_an_option_set_by_hand_where_it_does_not_apply_changes_nothing(
    make: Any, flag: str
) -> None:
    p = torch.ones(3, requires_grad=True)
    opt = make([p])
    p.grad = torch.ones(3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    weights = p.detach().clone()
    opt.param_groups[0][flag] = True
    with pytest.raises(ValueError, match=f"{flag}=True"):
        opt.step()
    for key, value in before.items():
        assert torch.equal(opt.state[p][key], value), key
    assert torch.equal(p.detach(), weights)


def test_a_checkpoint_without_the_options_keeps_them_and_stable_adamw_stays_clipped() -> None:
    p = torch.ones(3, requires_grad=True)
    ours = adamkit.AdamW([{"params": [p], "cautious": True}])
    theirs = torch.optim.AdamW([torch.ones(3, requires_grad=True)])
    ours.load_state_dict(theirs.state_dict())  # torch's: no such keys
    assert ours.param_groups[0]["cautious"] is True
    stable = adamkit.StableAdamW([torch.ones(3, requires_grad=True)])
    stable.load_state_dict(adamkit.AdamW([torch.ones(3, requires_grad=True)]).state_dict())
    assert stable.param_groups[0]["update_clipping"] is True


def test_update_stats_are_the_last_step_s() -> None:
    p = torch.ones(3, requires_grad=True)
    opt = adamkit.Adam([p], cautious=True, nonfinite="skip")
    p.grad = torch.tensor([1.0, -1.0, 2.0])
    opt.step()
    assert opt.update_stats[0]["kept_fraction"] == 1.0
    p.grad = torch.tensor([float("nan"), 1.0, 1.0])
    opt.step()  # skipped: the options did nothing
    assert opt.update_stats[0] == {"kept_fraction": None, "clip_factor": None}
    opt.param_groups[0]["cautious"] = False
    p.grad = torch.ones(3)
    opt.step()
    assert opt.update_stats[0]["kept_fraction"] is None


@pytest.mark.parametrize(
    "case", ["nan-gradient", "spike-then-next-tensor", "overflowing-square"], ids=str
)
def test_the_fused_options_handle_non_finite_sums_as_the_eager_path(case: str) -> None:
    """Found by probing the fused path: a NaN gradient made the whole tensor (and every later
    tensor of the bucket) NaN, since a NaN RMS passed through np.maximum and per-tensor sums
    were differences of a running total; a spike whose square overflows float32 gave inf / inf.
    Each now steps exactly as the multi-tensor path does."""
    g = torch.Generator().manual_seed(5)
    ps = [torch.randn(4, generator=g).requires_grad_() for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    kwargs = {"betas": (0.9, 0.9), "update_clipping": True}
    fused, eager = adamkit.AdamW(ps, **kwargs), adamkit.AdamW(qs, foreach=True, **kwargs)
    for t in range(20):
        for p, q in zip(ps, qs, strict=True):
            grad = torch.randn(4, generator=g)
            p.grad, q.grad = grad.clone(), grad
        if t == 19:
            bad = {"nan-gradient": math.nan, "spike-then-next-tensor": 3e19}.get(case, 1e20)
            ps[0].grad[0] = qs[0].grad[0] = bad  # type: ignore[index]
        fused.step()
        eager.step()
    assert fused.execution_path() == "fused"
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q, equal_nan=True)
    assert fused.update_stats[0]["clip_factor"] == pytest.approx(
        eager.update_stats[0]["clip_factor"], nan_ok=True
    )
