"""adamkit.Scheduler in real training loops: exact resume, any optimizer, per-group schedules,
Tensor lr, GradScaler skips, changing the lr by hand, atomic loading, plots and the CLI."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import adamkit
from adamkit.schedules import Lambda, Multiplicative, OneCycle, Schedule, Scheduler, parse

from .artifacts import assert_real_png, run
from .test_schedules import SPECS

ScheduleFactory = Callable[[], Schedule | list[Schedule]]
# Fresh objects per run, so a memoised product (multiplicative with a function) starts empty.
RESUME_CASES: list[tuple[str, ScheduleFactory]] = [
    *[(spec, lambda spec=spec: parse(spec)) for spec in SPECS],
    ("python-lambda", lambda: Lambda(lambda t: 0.97**t)),
    ("python-multiplicative", lambda: Multiplicative(lambda t: 0.9 if t % 2 else 1.05)),
    ("one-cycle-past-end", lambda: OneCycle(25)),
    ("per-group", lambda: [parse("warmup(5) + cosine(30)"), parse("wsd(3, 10, 20, floor=0.1)")]),
]
BEFORE, AFTER = 17, 23
# Changes by hand at global steps, in both runs: they must survive the checkpoint.
BY_HAND: dict[int, Callable[[torch.optim.Optimizer], None]] = {
    6: lambda opt: adamkit.scale_lr(opt, 0.5),
    29: lambda opt: adamkit.set_lr(opt, 2e-3, groups=0),
}


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    first, second = model[0], model[2]  # type: ignore[index]
    return adamkit.AdamW(
        [{"params": first.parameters()}, {"params": second.parameters(), "lr": 3e-3}], lr=1e-2
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: Scheduler, steps: range) -> list:
    lrs = []
    for step in steps:
        if step in BY_HAND:
            BY_HAND[step](opt)
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 3, generator=g)
        loss = (model(x).squeeze(1) - x.sum(1)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        lrs.append(adamkit.get_lr(opt))
        sched.step()
    return lrs


@pytest.mark.parametrize("load_order", ["scheduler-first", "optimizer-first"])
@pytest.mark.parametrize("factory", [c[1] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_resume_is_bit_identical(factory: ScheduleFactory, load_order: str, tmp_path: Path) -> None:
    model = _model(0)
    opt = _optimizer(model)
    straight = _train(model, opt, Scheduler(opt, factory()), range(BEFORE + AFTER))
    expected_params = [p.detach().clone() for p in model.parameters()]

    model = _model(0)
    opt = _optimizer(model)
    sched = Scheduler(opt, factory())
    first = _train(model, opt, sched, range(BEFORE))
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path
    )

    model = _model(1)  # different weights: everything must come from the checkpoint
    opt = _optimizer(model)
    sched = Scheduler(opt, factory())
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    if load_order == "scheduler-first":
        sched.load_state_dict(checkpoint["sched"])
        opt.load_state_dict(checkpoint["opt"])
    else:
        opt.load_state_dict(checkpoint["opt"])
        sched.load_state_dict(checkpoint["sched"])
    rest = _train(model, opt, sched, range(BEFORE, BEFORE + AFTER))

    assert first + rest == straight  # bit-identical lrs at every step
    for p, q in zip(model.parameters(), expected_params, strict=True):
        assert torch.equal(p, q)


def test_works_with_any_torch_optimizer() -> None:
    for make in (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=0.1),
        lambda ps: torch.optim.RMSprop(ps, lr=0.1),
    ):
        opt = make([torch.zeros(3, requires_grad=True)])
        sched = Scheduler(opt, "warmup(4) + cosine(8)")
        for step in range(15):
            assert adamkit.get_lr(opt) == [0.1 * sched.schedules[0](step)]
            opt.step()
            sched.step()


def test_per_group_schedules_and_base_lrs() -> None:
    opt = adamkit.Adam(
        [{"params": [torch.zeros(2)], "lr": 1.0}, {"params": [torch.zeros(2)], "lr": 0.5}]
    )
    sched = Scheduler(opt, ["linear(4)", "exponential(0.5)"])
    seen = []
    for _ in range(5):
        seen.append(adamkit.get_lr(opt))
        opt.step()
        sched.step()
    assert seen == [[1.0, 0.5], [0.75, 0.25], [0.5, 0.125], [0.25, 0.0625], [0.0, 0.03125]]
    with pytest.raises(ValueError, match="got 1 schedules for 2 param groups"):
        Scheduler(opt, ["linear(4)"])


def test_group_added_later_follows_a_shared_schedule() -> None:
    opt = adamkit.Adam([torch.zeros(2)], lr=1.0)
    sched = Scheduler(opt, "exponential(0.5)")
    opt.step()
    sched.step()
    opt.add_param_group({"params": [torch.zeros(2)], "lr": 4.0})
    opt.step()
    sched.step()
    assert adamkit.get_lr(opt) == [0.25, 1.0]


def test_tensor_lr_is_updated_in_place() -> None:
    lr = torch.tensor(0.01)
    opt = adamkit.Adam([torch.zeros(3, requires_grad=True)], lr=lr)
    held = opt.param_groups[0]["lr"]
    sched = Scheduler(opt, "warmup(2) + linear(4, end=0.5)")
    for step in range(8):
        assert opt.param_groups[0]["lr"] is held
        assert held.item() == pytest.approx(0.01 * sched.schedules[0](step), rel=1e-6)
        opt.step()
        sched.step()
    adamkit.set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is held and held.item() == 0.5
    assert isinstance(sched.get_last_lr()[0], torch.Tensor)


def _amp_step(
    model: nn.Module, opt: torch.optim.Optimizer, scaler: object, x: torch.Tensor
) -> None:
    scaler.scale(model(x).sum()).backward()  # type: ignore[attr-defined]
    scaler.step(opt)  # type: ignore[attr-defined]
    scaler.update()  # type: ignore[attr-defined]
    opt.zero_grad()


def test_grad_scaler_skipped_step_does_not_advance_and_does_not_warn() -> None:
    model = nn.Linear(2, 1)
    opt = adamkit.Adam(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns "lr_scheduler.step() before optimizer.step()"
        sched = Scheduler(opt, "linear(10)")
        _amp_step(model, opt, scaler, torch.tensor([[math.inf, 1.0]]))  # skipped: inf grads
        sched.step()
        assert (sched.last_epoch, sched.skipped, adamkit.get_lr(opt)) == (0, 1, [1.0])
        _amp_step(model, opt, scaler, torch.ones(1, 2))
        sched.step()
        assert (sched.last_epoch, sched.skipped, adamkit.get_lr(opt)) == (1, 1, [0.9])

    # torch's own scheduler advances anyway and warns about the order of calls.
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    theirs = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=10)
    _amp_step(model, opt, scaler, torch.tensor([[math.inf, 1.0]]))
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        theirs.step()
    assert theirs.last_epoch == 1


def test_skip_with_optimizer_false_advances_on_every_call() -> None:
    opt = adamkit.Adam([torch.zeros(1)], lr=1.0)
    sched = Scheduler(opt, "linear(4)", skip_with_optimizer=False)
    sched.step()
    sched.step()
    assert sched.last_epoch == 2 and adamkit.get_lr(opt) == [0.5]
    sched.step(epoch=1)  # closed form: any step can be visited directly
    assert adamkit.get_lr(opt) == [0.75]


def test_bad_multiplier_raises_and_changes_nothing() -> None:
    opt = adamkit.Adam([torch.zeros(1)], lr=1.0)
    sched = Scheduler(opt, Lambda(lambda t: math.nan if t == 2 else 1.0 / (t + 1)))
    opt.step()
    sched.step()
    opt.step()
    with pytest.raises(ValueError, match=r"gave lr multiplier nan at step 2 for param group 0"):
        sched.step()
    assert sched.last_epoch == 1 and adamkit.get_lr(opt) == [0.5]


def test_load_state_dict_refuses_bad_state_and_changes_nothing() -> None:
    opt = adamkit.Adam([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=1.0)
    sched = Scheduler(opt, "cosine(10)")
    for _ in range(3):
        opt.step()
        sched.step()
    good = sched.state_dict()
    before = (sched.state_dict(), [dict(g, params=None) for g in opt.param_groups])

    other = adamkit.Adam([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=1.0)
    other_sched = Scheduler(other, "linear(10)")
    for _ in range(5):
        other.step()
        other_sched.step()
    torch_state = torch.optim.lr_scheduler.StepLR(other, 3).state_dict()
    bad_states: list[tuple[object, type[Exception], str]] = [
        (other_sched.state_dict(), ValueError, r"made with schedule \['linear\(10\)'\]"),
        ({**good, "base_lrs": [1.0]}, ValueError, "has 1 base lrs but the optimizer has 2"),
        ({**good, "format": 99}, ValueError, "state format 99 is not supported"),
        ({**good, "last_epoch": -4}, ValueError, "last_epoch=-4 is invalid"),
        (torch_state, ValueError, "not an adamkit Scheduler state"),
        ([1, 2], TypeError, "expected a dict, got list"),
    ]
    for state, error, message in bad_states:
        with pytest.raises(error, match=message):
            sched.load_state_dict(state)  # type: ignore[arg-type]
        assert (sched.state_dict(), [dict(g, params=None) for g in opt.param_groups]) == before

    sched.load_state_dict(other_sched.state_dict(), strict=False)
    assert sched.last_epoch == 5 and adamkit.get_lr(opt) == [0.5 * (1 + math.cos(math.pi / 2))] * 2


# ------------------------------------------------------------------ changing the lr by hand
def _named_optimizer() -> torch.optim.Optimizer:
    return adamkit.Adam(
        [
            {"params": [torch.zeros(1)], "lr": 1.0, "name": "body"},
            {"params": [torch.zeros(1)], "lr": 0.1, "name": "head"},
            {"params": [torch.zeros(1)], "lr": 0.01},
        ]
    )


def test_get_set_scale_lr_by_index_name_and_all() -> None:
    opt = _named_optimizer()
    assert adamkit.get_lr(opt) == [1.0, 0.1, 0.01]
    assert adamkit.get_lr(opt, "head") == [0.1]
    adamkit.set_lr(opt, 0.5, groups="body")
    adamkit.scale_lr(opt, 10, groups=[-1, "head"])
    assert adamkit.get_lr(opt) == [0.5, 1.0, 0.1]
    adamkit.set_lr(opt, 0.2)
    assert adamkit.get_lr(opt) == [0.2, 0.2, 0.2]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda o: adamkit.set_lr(o, -1.0), ValueError, r"set_lr: lr=-1.0 is invalid"),
        (lambda o: adamkit.set_lr(o, math.nan), ValueError, r"set_lr: lr=nan is invalid"),
        (lambda o: adamkit.set_lr(o, True), ValueError, r"set_lr: lr=True is invalid"),
        (lambda o: adamkit.scale_lr(o, math.inf), ValueError, r"scale_lr: factor=inf is invalid"),
        (lambda o: adamkit.set_lr(o, 0.1, groups=3), IndexError, r"param group 3 does not exist"),
        (
            lambda o: adamkit.set_lr(o, 0.1, groups="tail"),
            KeyError,
            r"no param group is named 'tail'",
        ),
        (lambda o: adamkit.get_lr(o, groups=1.5), TypeError, r"by index or name, got 1.5"),
        (lambda o: adamkit.get_lr("opt"), TypeError, r"expected a torch.optim.Optimizer"),
    ],
)
def test_lr_functions_reject_bad_input(
    call: Callable[[torch.optim.Optimizer], None], error: type[Exception], message: str
) -> None:
    opt = _named_optimizer()
    with pytest.raises(error, match=message):
        call(opt)
    assert adamkit.get_lr(opt) == [1.0, 0.1, 0.01]


def test_set_lr_rebases_an_attached_scheduler() -> None:
    opt = adamkit.Adam([torch.zeros(1)], lr=1.0)
    sched = Scheduler(opt, "warmup(2) + linear(8, end=0.0)")
    for _ in range(4):
        opt.step()
        sched.step()
    assert adamkit.get_lr(opt) == [0.75]
    adamkit.set_lr(opt, 0.3)  # the lr is 0.3 now; the schedule carries on from it
    assert adamkit.get_lr(opt) == [0.3]
    later = []
    for _ in range(3):
        opt.step()
        sched.step()
        later.append(adamkit.get_lr(opt)[0])
    assert later == pytest.approx([0.3 * 5 / 6, 0.3 * 4 / 6, 0.3 * 3 / 6])
    adamkit.scale_lr(opt, 2.0)
    opt.step()
    sched.step()
    assert adamkit.get_lr(opt) == pytest.approx([0.6 * 2 / 6])


def test_set_lr_where_the_schedule_is_zero_says_to_scale() -> None:
    opt = adamkit.Adam([torch.zeros(1)], lr=1.0)
    Scheduler(opt, "warmup(10) + cosine(100)")
    with pytest.raises(ValueError, match=r"multiplier is 0 there .*use scale_lr"):
        adamkit.set_lr(opt, 0.1)
    adamkit.scale_lr(opt, 0.1)
    assert adamkit.get_lr(opt) == [0.0]


def test_set_lr_with_torch_chainable_scheduler_continues_from_the_new_value() -> None:
    opt = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda e: 0.5)
    opt.step()
    sched.step()
    adamkit.set_lr(opt, 0.1)
    opt.step()
    sched.step()
    assert adamkit.get_lr(opt) == [0.05]


# ---------------------------------------------------------------------------- plots and CLI
def test_plot_schedule_writes_a_png_and_a_terminal_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = adamkit.plot_schedule(
        {"warmup+cosine": "warmup(20) + cosine(180, floor=0.1)", "wsd": "wsd(20, 120, 60)"},
        tmp_path / "s.png",
        lr=3e-4,
    )
    assert_real_png(path)
    out = capsys.readouterr().out
    assert "warmup+cosine" in out and "step 20: 0.0003" in out and "▇" in out
    with pytest.raises(ValueError, match=r"steps=0 is invalid"):
        adamkit.plot_schedule("cosine(10)", tmp_path / "x.png", steps=0, terminal=False)


def test_cli_draws_the_seed_schedules_and_warmup_cosine(tmp_path: Path) -> None:
    for spec, lr, steps in [
        ("lambda(0.67 ** epoch)", "100", "10"),
        ("multiplicative(0.69)", "100", "10"),
        ("warmup(200) + cosine(1800, floor=0.1)", "3e-4", "2000"),
    ]:
        png = tmp_path / "schedule.png"
        png.unlink(missing_ok=True)
        result = run(
            [
                sys.executable,
                "-m",
                "adamkit",
                "schedule",
                spec,
                "--lr",
                lr,
                "--steps",
                steps,
                "-o",
                str(png),
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert f"wrote {png}" in result.stdout
        assert_real_png(png)


def test_cli_bad_spec_points_at_the_bad_part(tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "adamkit", "schedule", "warmup(200) + cosin(2000)"], tmp_path
    )
    assert result.returncode == 2
    assert "unknown schedule 'cosin' (did you mean 'cosine'?)" in result.stderr
    assert "                ^^^^^" in result.stderr
    assert not (tmp_path / "schedule.png").exists()
