"""Schedule-free AdamW against the authors' package (``schedulefree``) and its paper.

The registry's cases already hold every path equal to the NumPy reference, which keeps the
paper's three sequences apart (tests/test_parity.py); here: the package, step for step with
train/eval switches and a parameter that skips steps, the averaged point ``x`` after
``eval()``, checkpoints both ways, and the bad input of the modes."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import adamkit
from adamkit import reference

schedulefree = pytest.importorskip("schedulefree")

SETTINGS = [
    {},
    {"weight_decay": 0.1, "warmup_steps": 40, "r": 1.0, "weight_lr_power": 1.5},
    {"lr": 1e-2, "betas": (0.95, 0.99), "eps": 1e-6, "warmup_steps": 10},
]
PATHS = [{"foreach": True}, {"foreach": False}, {"fused": True}]
GROUP_KEYS = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode")


def _params(dtype: torch.dtype, seed: int = 0, large: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(17, 9), (33,), (), *([(70_000,)] if large else [])]  # two kernel chunks
    return [torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in shapes]


def _twins(settings: dict[str, Any], path: dict[str, Any], dtype: torch.dtype) -> tuple:
    # The fused kernel's two-chunk tensor once (default settings); the math on small ones.
    ours_p = _params(dtype, large="fused" in path and settings is SETTINGS[0])
    peer_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = adamkit.ScheduleFreeAdamW(ours_p, **settings, **path)
    peer = schedulefree.AdamWScheduleFree(peer_p, **settings, foreach=path.get("foreach", True))
    peer.train()
    return ours, peer, ours_p, peer_p


def _run(ours, peer, ours_p, peer_p, steps: int, seed: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Train both; parameter 1 has no gradient every fourth step; every 50 steps both go to
    eval mode and back, as an evaluation between epochs does."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, (p, q) in enumerate(zip(ours_p, peer_p, strict=True)):
            grad = torch.randn(p.shape, dtype=p.dtype, generator=g) + 0.1
            # The package divides the gradient in place: each gets its own copy.
            p.grad, q.grad = (None, None) if i == 1 and t % 4 == 3 else (grad.clone(), grad)
        ours.step()
        peer.step()
        if t % 50 == 49:
            ours.eval()
            peer.eval()
            ours.train()
            peer.train()


def _assert_equal(ours, peer, ours_p, peer_p, rtol: float, atol: float) -> None:  # type: ignore[no-untyped-def]
    for p, q in zip(ours_p, peer_p, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol)
        for key in ("z", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][key], peer.state[q][key], rtol=rtol, atol=atol)
    for key in GROUP_KEYS:
        assert ours.param_groups[0][key] == pytest.approx(peer.param_groups[0][key], rel=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "decay-warmup-r", "odd"])
def test_equals_the_schedulefree_package_over_300_steps(
    settings: dict[str, Any], path: dict[str, Any]
) -> None:
    """Parameters (y during training, x after eval()), z, v and the group's schedule agree
    with ``schedulefree.AdamWScheduleFree`` over 300 steps: to 1e-12 in float64 (adamkit takes
    sqrt(v) / sqrt(1 - beta2^t) where the package takes sqrt(v / (1 - beta2^t)): the last bit),
    and to float32's rounding over 300 steps in float32."""
    precisions = [(torch.float64, 1e-12, 1e-14)]
    if settings is SETTINGS[0]:
        precisions.append((torch.float32, 2e-5, 1e-6))
    for dtype, rtol, atol in precisions:
        ours, peer, ours_p, peer_p = _twins(settings, path, dtype)
        _run(ours, peer, ours_p, peer_p, 300)
        _assert_equal(ours, peer, ours_p, peer_p, rtol, atol)
        ours.eval()
        peer.eval()
        _assert_equal(ours, peer, ours_p, peer_p, rtol, atol)


def test_eval_gives_the_references_average_x() -> None:
    """After eval(), the parameters are the paper's x (kept apart in the NumPy reference);
    train() brings back y exactly enough to go on."""
    p = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p.requires_grad_()
    settings = {"lr": 0.01, "weight_decay": 0.05, "warmup_steps": 5, "r": 0.5}
    opt = adamkit.ScheduleFreeAdamW([p], **settings)
    theta, state = p.detach().numpy().copy(), None
    g = torch.Generator().manual_seed(4)
    for _ in range(120):
        grad = torch.randn(50, dtype=torch.float64, generator=g)
        p.grad = grad
        opt.step()
        theta, state = reference.schedulefree_adamw(theta, grad.numpy(), state, **settings)
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-10, atol=1e-13)
    opt.eval()
    np.testing.assert_allclose(p.detach().numpy(), state["x"], rtol=1e-10, atol=1e-13)
    opt.train()
    np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-10, atol=1e-13)


def test_a_step_in_eval_mode_is_refused_and_changes_nothing() -> None:
    p = torch.ones(4, requires_grad=True)
    opt = adamkit.ScheduleFreeAdamW([p], lr=0.1)
    opt.eval()  # before the first step: nothing to move
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.param_groups[0]["train_mode"]
    p.grad = torch.ones(4)
    with pytest.raises(RuntimeError, match=r"in eval mode .*Call optimizer\.train\(\)"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.state
    opt.train()
    opt.train()  # idempotent
    for grad in (1.0, -2.0, 0.5):  # after one step x = y = z: take three
        p.grad = torch.full((4,), grad)
        opt.step()
    y = p.detach().clone()
    opt.eval()
    opt.eval()  # idempotent: x once, not twice
    x = p.detach().clone()
    opt.train()
    torch.testing.assert_close(p.detach(), y)
    assert not torch.equal(x, y)


def test_the_mode_is_per_group_and_checked_for_every_group() -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = adamkit.ScheduleFreeAdamW([{"params": [a]}, {"params": [b], "lr": 0.1}])
    opt.param_groups[1]["train_mode"] = False  # a group left in eval mode by hand
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(RuntimeError, match="param group 1"):
        opt.step()
    assert not opt.state  # group 0 did not step either


def _stepped_in_eval_mode() -> None:
    p = torch.ones(2, requires_grad=True)
    opt = adamkit.ScheduleFreeAdamW([p])
    opt.eval()
    p.grad = torch.ones(2)
    opt.step()


def _scheduled() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = adamkit.ScheduleFreeAdamW([torch.ones(2, requires_grad=True)])
        adamkit.Scheduler(opt, "cosine(100)")


def _make(**kwargs: Any) -> Any:
    return lambda: adamkit.ScheduleFreeAdamW([torch.ones(2, requires_grad=True)], **kwargs)


#: (code, call, error, message): the schedule-free rows of docs/bad-input.md.
BAD_SCHEDULE_FREE: list[tuple[str, Any, type[Exception], str]] = [
    (
        "ScheduleFreeAdamW(params, betas=(0.0, 0.999))",
        _make(betas=(0.0, 0.999)),
        ValueError,
        r"beta1 > 0",
    ),
    (
        "ScheduleFreeAdamW(params, warmup_steps=-1)",
        _make(warmup_steps=-1),
        ValueError,
        r"warmup_steps",
    ),
    (
        "ScheduleFreeAdamW(params, warmup_steps=2.5)",
        _make(warmup_steps=2.5),
        ValueError,
        r"warmup_steps is a number of steps",
    ),
    (
        "ScheduleFreeAdamW(params, weight_lr_power=-2.0)",
        _make(weight_lr_power=-2.0),
        ValueError,
        r"weight_lr_power",
    ),
    (
        "ScheduleFreeAdamW(params, lr=-1.0)  # the package accepts it",
        _make(lr=-1.0),
        ValueError,
        r"learning rate",
    ),
    (
        "opt.eval(); opt.step()",
        _stepped_in_eval_mode,
        RuntimeError,
        r"in eval mode .*Call optimizer\.train\(\)",
    ),
    (
        "adamkit.Scheduler(opt, 'cosine(100)')  # a warning",
        _scheduled,
        UserWarning,
        r"schedule-free and needs no learning-rate schedule",
    ),
]


@pytest.mark.parametrize(
    ("code", "call", "error", "message"), BAD_SCHEDULE_FREE, ids=[r[0] for r in BAD_SCHEDULE_FREE]
)
def test_bad_input_is_named(code: str, call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_a_param_group_added_later_is_checked() -> None:
    opt = adamkit.ScheduleFreeAdamW([torch.ones(2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"param group 1: .*beta1 > 0"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "betas": (0, 0.9)})
    assert len(opt.param_groups) == 1


def test_a_scheduler_on_top_warns_that_it_is_not_needed() -> None:
    opt = adamkit.ScheduleFreeAdamW([torch.ones(2, requires_grad=True)])
    with pytest.warns(UserWarning, match="schedule-free and needs no learning-rate schedule"):
        adamkit.Scheduler(opt, "cosine(100)")
    plain = adamkit.AdamW([torch.ones(2, requires_grad=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adamkit.Scheduler(plain, "cosine(100)")


@pytest.mark.parametrize("direction", ["ours-to-package", "package-to-ours"])
def test_checkpoints_move_between_adamkit_and_the_package(direction: str) -> None:
    """The same state names (``z``, ``exp_avg_sq``) and group keys (``k``, ``weight_sum``,
    ``lr_max``, ``train_mode``): a checkpoint of either resumes in the other."""
    settings = {"lr": 5e-3, "warmup_steps": 20, "weight_decay": 0.01}
    ours, peer, ours_p, peer_p = _twins(settings, {"foreach": True}, torch.float64)
    _run(ours, peer, ours_p, peer_p, 60)
    fresh_p = [p.detach().clone().requires_grad_() for p in ours_p]
    if direction == "ours-to-package":
        source, target = ours, schedulefree.AdamWScheduleFree(fresh_p, **settings)
    else:
        source, target = peer, adamkit.ScheduleFreeAdamW(fresh_p, **settings)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    assert target.param_groups[0]["k"] == 60 and target.param_groups[0]["train_mode"]
    resumed_ours = target if direction == "package-to-ours" else ours
    resumed_peer = target if direction == "ours-to-package" else peer
    mine = fresh_p if direction == "package-to-ours" else ours_p
    theirs = fresh_p if direction == "ours-to-package" else peer_p
    _run(resumed_ours, resumed_peer, mine, theirs, 40, seed=5)
    _assert_equal(resumed_ours, resumed_peer, mine, theirs, 1e-12, 1e-14)


def test_resumes_exactly_in_a_fresh_process(tmp_path: Any) -> None:
    """Saved in eval mode (as the package advises), loaded in a new process, back to train:
    the run goes on bit for bit."""
    ps = _params(torch.float32)
    opt = adamkit.ScheduleFreeAdamW(ps, lr=5e-3, warmup_steps=10)
    twin_p = [p.detach().clone().requires_grad_() for p in ps]
    twin = adamkit.ScheduleFreeAdamW(twin_p, lr=5e-3, warmup_steps=10)
    _run(opt, twin, ps, twin_p, 30)
    opt.eval()
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict()}, tmp_path / "c.pt")
    opt.train()
    _run(opt, twin, ps, twin_p, 20, seed=9)
    script = f"""
import sys, torch, adamkit
sys.path.insert(0, {str(tmp_path)!r})
saved = torch.load({str(tmp_path / "c.pt")!r}, weights_only=True)
ps = [p.clone().requires_grad_() for p in saved["params"]]
opt = adamkit.ScheduleFreeAdamW(ps, lr=5e-3, warmup_steps=10)
opt.load_state_dict(saved["opt"])
opt.train()
g = torch.Generator().manual_seed(9)
for t in range(20):
    for i, p in enumerate(ps):
        grad = torch.randn(p.shape, dtype=p.dtype, generator=g) + 0.1
        p.grad = None if i == 1 and t % 4 == 3 else grad
    opt.step()
torch.save([p.detach() for p in ps], {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    for a, b in zip(torch.load(tmp_path / "out.pt"), ps, strict=True):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
def test_bf16_weights_with_stochastic_rounding_round_z_as_the_weights(path: dict) -> None:
    """z is a copy of the weights: with bf16 parameters and stochastic_rounding=True it is
    rounded stochastically too (to nearest, steps of 1e-4 on 1.5 were all lost: z never
    moved), so z and x follow the fp32 run on average."""
    p = torch.full((1000,), 1.5, dtype=torch.bfloat16, requires_grad=True)
    f = torch.full((1000,), 1.5, requires_grad=True)
    opt = adamkit.ScheduleFreeAdamW([p], lr=1e-4, stochastic_rounding=True, **path)
    ref = adamkit.ScheduleFreeAdamW([f], lr=1e-4)
    for _ in range(200):
        p.grad, f.grad = torch.ones(1000, dtype=torch.bfloat16), torch.ones(1000)
        opt.step()
        ref.step()
    moved, expected = opt.state[p]["z"].float().mean() - 1.5, ref.state[f]["z"].mean() - 1.5
    assert float(moved) == pytest.approx(float(expected), rel=0.05)  # -0.020
    opt.eval()
    ref.eval()
    assert float(p.float().mean() - 1.5) == pytest.approx(float(f.mean() - 1.5), rel=0.15)


def test_differentiable_steps_and_mode_switches_are_in_the_graph() -> None:
    """differentiable=True: z starts as the parameter in the graph (after one step, with
    c = 1, y_1 = z_1: d y_1 / d w_0 = 1), and eval()'s move to x is recorded, so a
    hypergradient of lr through x matches finite differences."""
    w0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    p = w0.clone()
    opt = adamkit.ScheduleFreeAdamW([p], lr=0.1, differentiable=True)
    p.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    assert torch.autograd.grad(p.sum(), w0)[0].item() == pytest.approx(1.0)

    def x_sum(lr: Any, differentiable: bool) -> Any:
        start = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        q = start.clone() if differentiable else start
        o = adamkit.ScheduleFreeAdamW([q], lr=lr, differentiable=differentiable)
        for g in ([0.5, 1.0], [-1.0, 0.3]):
            q.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
        o.eval()
        return q.sum()

    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    analytic = torch.autograd.grad(x_sum(lr, True), lr)[0].item()
    with torch.no_grad():
        numeric = (x_sum(0.1 + 1e-6, False).item() - x_sum(0.1 - 1e-6, False).item()) / 2e-6
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_a_group_added_in_eval_mode_starts_in_eval_mode() -> None:
    opt = adamkit.ScheduleFreeAdamW([torch.ones(2, requires_grad=True)])
    opt.eval()
    opt.add_param_group({"params": [torch.ones(3, requires_grad=True)]})
    assert [g["train_mode"] for g in opt.param_groups] == [False, False]


def test_a_group_changed_by_hand_is_refused_and_its_schedule_does_not_advance() -> None:
    p = torch.ones(3, requires_grad=True)
    opt = adamkit.ScheduleFreeAdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    schedule = {k: opt.param_groups[0][k] for k in ("k", "weight_sum", "lr_max")}
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="param group 0: Invalid learning rate"):
        opt.step()
    assert {k: opt.param_groups[0][k] for k in schedule} == schedule


@pytest.mark.parametrize(("precision", "nbytes"), [("bf16", 6.0), ("8bit", 5.02)])
def test_low_precision_moments_beside_full_precision_z(precision: str, nbytes: float) -> None:
    """``state_precision`` applies to exp_avg_sq; z, a copy of the weights, is kept as the
    weights are. Two formats a tensor: the kernels take one, so the default path steps it on
    the multi-tensor path and ``fused=True`` says why. A checkpoint converts exp_avg_sq and
    keeps z bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 64)
    opt = adamkit.ScheduleFreeAdamW(model.parameters(), lr=1e-2, state_precision=precision)
    model(torch.randn(8, 256)).square().mean().backward()
    opt.step()
    entry = opt.state[model.weight]
    assert entry["z"].dtype == torch.float32
    assert entry["exp_avg_sq"].dtype == (torch.bfloat16 if precision == "bf16" else torch.uint8)
    memory = adamkit.state_memory(opt)
    assert memory.by_key["z"] == 4 * (256 * 64 + 64)
    assert memory.bytes_per_param == pytest.approx(nbytes, abs=0.03)  # Adam's 8 in fp32
    full = adamkit.ScheduleFreeAdamW(model.parameters(), lr=1e-2)
    full.load_state_dict(opt.state_dict())
    assert torch.equal(full.state[model.weight]["z"], entry["z"])
    assert full.state[model.weight]["exp_avg_sq"].dtype == torch.float32
    strict = adamkit.ScheduleFreeAdamW(
        model.parameters(), lr=1e-2, state_precision=precision, fused=True
    )
    with pytest.raises(RuntimeError, match=r"keeps z as the weights beside .* moments"):
        strict.step()
