"""Loading checkpoints safely: by parameter name, with shape and key checks, atomically, and
across state format versions (tests/data/format<N>/ holds files written by each format)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import adamkit
from adamkit.optim import STATE_FORMAT

from .registry import ALGORITHMS, TABLE, TWINNED

DATA = Path(__file__).with_name("data")


def _model(hidden: int = 4, extra: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2)]
    if extra:
        layers.append(nn.Linear(2, 2))
    return nn.Sequential(*layers)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    for step in range(steps):
        g = torch.Generator().manual_seed(seed + step)
        x = torch.randn(8, 3, generator=g)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


def _snapshot(optimizer: torch.optim.Optimizer) -> Any:
    """Every state tensor and group value, copied, keyed by parameter identity."""
    state = {id(p): copy.deepcopy(s) for p, s in optimizer.state.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return (
        state,
        copy.deepcopy(groups),
        [[id(p) for p in g["params"]] for g in optimizer.param_groups],
    )


def _assert_unchanged(optimizer: torch.optim.Optimizer, before: Any) -> None:
    state, groups, ids = _snapshot(optimizer)
    assert ids == before[2] and groups == before[1]
    assert state.keys() == before[0].keys()
    for key, entry in state.items():
        assert entry.keys() == before[0][key].keys()
        for name, value in entry.items():
            assert torch.equal(value, before[0][key][name]), name


@pytest.mark.parametrize("name", ALGORITHMS)
def test_state_follows_names_when_the_order_changes(name: str) -> None:
    model = _model()
    saved_opt = getattr(adamkit, name)(model.named_parameters(), lr=0.01)
    _train(model, saved_opt, 5)
    checkpoint = copy.deepcopy(saved_opt.state_dict())

    # The same parameters listed in reverse: torch would load each state into the wrong tensor.
    reordered = getattr(adamkit, name)(list(model.named_parameters())[::-1], lr=0.01)
    report = reordered.load_state_dict(checkpoint)
    assert report == adamkit.LoadReport([], [], [])
    for p in model.parameters():
        for key, value in saved_opt.state[p].items():
            assert torch.equal(reordered.state[p][key], value), key


def test_strict_names_list_what_is_missing_and_unexpected() -> None:
    model = _model()
    opt = adamkit.AdamW(model.named_parameters(), lr=0.01)
    _train(model, opt, 3)
    checkpoint = copy.deepcopy(opt.state_dict())

    bigger = _model(extra=True)
    target = adamkit.AdamW(bigger.named_parameters(), lr=0.01)
    before = _snapshot(target)
    with pytest.raises(ValueError, match=r"missing from the checkpoint: '3.weight', '3.bias'"):
        target.load_state_dict(checkpoint)
    _assert_unchanged(target, before)

    report = target.load_state_dict(checkpoint, strict=False)
    assert report.missing == ["3.weight", "3.bias"] and not report.unexpected
    assert len(target.state[bigger[3].weight]) == 0  # fresh, stepped from zero later
    for (n, p), q in zip(model.named_parameters(), bigger.parameters(), strict=False):
        assert torch.equal(target.state[q]["exp_avg"], opt.state[p]["exp_avg"]), n

    smaller = adamkit.AdamW(list(model.named_parameters())[:2], lr=0.01)
    with pytest.raises(ValueError, match=r"not in this optimizer: '2.weight', '2.bias'"):
        smaller.load_state_dict(checkpoint)
    assert smaller.load_state_dict(checkpoint, strict=False).unexpected == ["2.weight", "2.bias"]


def test_shape_mismatch_by_name_is_named() -> None:
    model = _model(hidden=4)
    opt = adamkit.Adam(model.named_parameters())
    _train(model, opt, 2)
    checkpoint = copy.deepcopy(opt.state_dict())
    wider = _model(hidden=5)
    target = adamkit.Adam(wider.named_parameters())
    before = _snapshot(target)
    with pytest.raises(
        ValueError,
        match=r"not matching: '0.weight': state 'exp_avg' has shape \(4, 3\), the parameter "
        r"\(5, 3\)",
    ):
        target.load_state_dict(checkpoint)
    _assert_unchanged(target, before)
    report = target.load_state_dict(checkpoint, strict=False)
    assert report.mismatched == ["0.weight", "0.bias", "2.weight"]
    assert torch.equal(target.state[wider[2].bias]["exp_avg"], opt.state[model[2].bias]["exp_avg"])


def test_without_names_position_is_checked() -> None:
    a, b = torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True)
    opt = adamkit.Adam([a, b])
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    checkpoint = copy.deepcopy(opt.state_dict())
    swapped = adamkit.Adam(
        [torch.zeros(5, requires_grad=True), torch.zeros(4, 3, requires_grad=True)]
    )
    before = _snapshot(swapped)
    with pytest.raises(
        ValueError,
        match=r"parameter #0 of param group 0 does not match the checkpoint: state 'exp_avg' "
        r"has shape \(4, 3\), the parameter \(5,\).*named_parameters\(\)",
    ):
        swapped.load_state_dict(checkpoint)
    _assert_unchanged(swapped, before)
    with pytest.raises(
        ValueError, match=r"param group 0 of the checkpoint has 2 parameters, this optimizer's 1"
    ):
        adamkit.Adam([torch.zeros(1, requires_grad=True)]).load_state_dict(checkpoint)
    with pytest.raises(ValueError, match=r"the checkpoint has 1 param groups, this optimizer 2"):
        adamkit.Adam([{"params": [a]}, {"params": [b]}]).load_state_dict(checkpoint)


def test_another_optimizers_checkpoint_is_refused() -> None:
    p = torch.zeros(3, requires_grad=True)
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    sgd.step()
    opt = adamkit.Adam([p])
    with pytest.raises(
        ValueError, match=r"lacks \['step', 'exp_avg', 'exp_avg_sq'\] .*another optimizer"
    ):
        opt.load_state_dict(sgd.state_dict())


BAD_STATE_DICTS: list[tuple[Callable[[dict[str, Any]], Any], type[Exception], str]] = [
    (lambda sd: [sd], TypeError, r"expected a dict with 'state' and 'param_groups', got list"),
    (lambda sd: {"state": sd["state"]}, ValueError, r"no \['param_groups'\] entry"),
    (lambda sd: {**sd, "state": []}, TypeError, r"'state' must be a dict"),
    (lambda sd: {**sd, "param_groups": [{"lr": 1}]}, TypeError, r"list of dicts with 'params'"),
    (
        lambda sd: {**sd, "adamkit": {"format": STATE_FORMAT + 1, "version": "9.0"}},
        ValueError,
        rf"written by adamkit 9.0 in state format {STATE_FORMAT + 1}; adamkit .* reads formats "
        rf"up to {STATE_FORMAT}\. Upgrade adamkit",
    ),
    (lambda sd: {**sd, "adamkit": {"format": "1"}}, ValueError, r"malformed 'adamkit' entry"),
    (
        lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": -1.0}]},
        ValueError,
        r"loaded param group 0: Invalid learning rate: -1.0",
    ),
    (
        lambda sd: {**sd, "state": {0: {**sd["state"][0], "exp_avg": torch.zeros(7)}}},
        ValueError,
        r"state 'exp_avg' has shape \(7,\)",
    ),
    (
        lambda sd: {**sd, "state": {0: {**sd["state"][0], "step": torch.zeros(2)}}},
        ValueError,
        r"state 'step' should hold one real number",
    ),
    (
        lambda sd: {
            **sd,
            "state": {0: {**sd["state"][0], "exp_avg": torch.zeros(3, dtype=torch.int64)}},
        },
        ValueError,
        r"state 'exp_avg' is torch.int64",
    ),
    (
        lambda sd: {
            **sd,
            "state": {0: {**sd["state"][0], "exp_avg": torch.zeros(3, dtype=torch.uint8)}},
        },
        ValueError,
        r"state 'exp_avg' holds 8-bit codes but the entry has no 'exp_avg_scale'",
    ),
    (
        lambda sd: {
            **sd,
            "state": {
                0: {
                    **sd["state"][0],
                    "exp_avg": torch.zeros(3, dtype=torch.uint8),
                    "exp_avg_scale": torch.zeros(5),
                }
            },
        },
        ValueError,
        r"state 'exp_avg_scale' should hold 1 block scales \(a 1-d float tensor\)",
    ),
    # Counters that load as numbers, and make every parameter NaN at the next step.
    *(
        (
            lambda sd, step=step: {**sd, "state": {0: {**sd["state"][0], "step": step}}},
            ValueError,
            rf"parameter #0 of param group 0: state 'step' is {shown} \(expected a finite number "
            r">= 0\): a corrupt checkpoint",
        )
        for step, shown in [
            (torch.tensor(-1.0), r"-1\.0"),
            (torch.tensor(math.nan), "nan"),
            (torch.tensor(math.inf), "inf"),
            (-1, r"-1\.0"),
        ]
    ),
    (
        lambda sd: {**sd, "state": {0: {**sd["state"][0], "mu_product": torch.tensor(math.nan)}}},
        ValueError,
        r"parameter #0 of param group 0: state 'mu_product' is nan \(expected a finite number\)",
    ),
    (
        lambda sd: {
            **sd,
            "state": {
                0: {
                    **sd["state"][0],
                    f"{_first_state(sd)}_codes": torch.zeros(3, dtype=torch.uint8),
                    f"{_first_state(sd)}_scale": torch.ones(1),
                }
            },
        },
        ValueError,
        r"parameter #0 of param group 0: state has both '(\w+)' and its codes '\1_codes'",
    ),
    (
        lambda sd: {**sd, "state": {0: {**sd["state"][0], "exp_avg_sq_codes": torch.zeros(3)}}},
        ValueError,
        r"state 'exp_avg_sq_codes' should hold the 8-bit codes of 'exp_avg_sq' \(uint8\), it is "
        r"a torch.float32 tensor",
    ),
]


def _first_state(sd: dict[str, Any]) -> str:
    """The first state tensor of parameter 0 (``exp_avg``, schedule-free's ``z``)."""
    return next(k for k in sd["state"][0] if k != "step")


@pytest.mark.parametrize(("corrupt", "error", "message"), BAD_STATE_DICTS)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_failed_load_changes_nothing(
    name: str, corrupt: Callable[[dict[str, Any]], Any], error: type[Exception], message: str
) -> None:
    p = torch.zeros(3, requires_grad=True)
    opt = getattr(adamkit, name)([p], lr=0.01)
    p.grad = torch.ones(3)
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    before = _snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(corrupt(good))
    _assert_unchanged(opt, before)
    p.grad = torch.ones(3)
    opt.step()  # still works


@pytest.mark.parametrize("execution", [{"foreach": True}, {"fused": True}])
def test_a_corrupt_counter_is_refused_by_name_even_when_not_strict(execution: dict) -> None:
    model = _model()
    opt = adamkit.NAdam(model.named_parameters(), lr=0.01, **execution)
    _train(model, opt, 2)
    checkpoint = copy.deepcopy(opt.state_dict())
    checkpoint["state"][2]["step"] = torch.tensor(-1.0)
    before = _snapshot(opt)
    for strict in (True, False):
        with pytest.raises(
            ValueError, match=r"parameter '2.weight': state 'step' is -1.0 \(expected a finite"
        ):
            opt.load_state_dict(checkpoint, strict=strict)
        _assert_unchanged(opt, before)
    checkpoint["state"][2]["step"] = torch.tensor(2.0)
    checkpoint["state"][1]["mu_product"] = torch.tensor(math.inf)
    with pytest.raises(ValueError, match=r"parameter '0.bias': state 'mu_product' is inf"):
        opt.load_state_dict(checkpoint)
    _assert_unchanged(opt, before)
    _train(model, opt, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "path", sorted(DATA.glob("format*/*.pt")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
@pytest.mark.parametrize("execution", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_checkpoints_of_every_released_format_load_and_continue(
    path: Path, execution: dict[str, bool]
) -> None:
    if execution.get("fused") and not TABLE[path.stem].fused:
        pytest.skip(f"{path.stem} has no fused kernel")
    saved = torch.load(path, weights_only=True)
    params = [p.clone().requires_grad_() for p in saved["params"]]
    named = [(f"layer.{i}", p) for i, p in enumerate(params)]
    opt = getattr(adamkit, path.stem)(named, lr=0.01, **saved["kwargs"], **execution)
    assert opt.load_state_dict(saved["optimizer"]) == adamkit.LoadReport([], [], [])
    for grads in saved["grads"]:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    # The files were written on the foreach path. With 8-bit state (formats 2, 3) the fused
    # kernel's last-ulp differences can flip a code, which moves a parameter by a fraction of
    # lr per step (tests/test_precision.py bounds it by 0.1 lr).
    coded = saved["kwargs"].get("state_precision") == "8bit" and execution.get("fused")
    tolerance = 0.1 * 0.01 * len(saved["grads"]) if coded else 1e-6
    for p, expected in zip(params, saved["expected"], strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=tolerance, atol=tolerance)


def test_8bit_checkpoints_are_format_3_and_others_format_1() -> None:
    p = torch.nn.Parameter(torch.randn(64, 80))
    for precision, fmt in (("fp32", 1), ("bf16", 1), ("8bit", 3)):
        opt = adamkit.Adam([p], state_precision=precision)
        p.grad = torch.ones_like(p)
        opt.step()
        assert opt.state_dict()["adamkit"]["format"] == fmt
        full = adamkit.full_precision_state(opt.state_dict())
        assert full["adamkit"]["format"] == 1
        assert all(v.dtype == torch.float32 for v in full["state"][0].values())
        torch.optim.Adam([p]).load_state_dict(full)  # torch reads it


MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "variance")


@pytest.mark.parametrize("name", [n for n in TWINNED if "8bit" in TABLE[n].precisions])
def test_torch_fails_loudly_on_an_8bit_checkpoint(name: str) -> None:
    # torch loads any state dict of the right size; with the codes under the moments' keys
    # (format 2) its next step used the uint8 codes as moments, silently.
    kwargs = {"amsgrad": True} if name in ("Adam", "AdamW") else {}
    # (Adafactor codes a vector's variance: its matrices keep row and column statistics)
    p = torch.nn.Parameter(torch.randn(5120 if TABLE[name].layout else (64, 80)))
    opt = getattr(adamkit, name)([p], state_precision="8bit", **kwargs)
    p.grad = torch.randn_like(p)
    opt.step()
    saved = opt.state_dict()
    entry = saved["state"][0]
    first = next(iter(TABLE[name].shapes(tuple(p.shape))))  # exp_avg, Adafactor's variance
    assert not any(key in entry for key in MOMENTS)
    assert entry[f"{first}_codes"].dtype == torch.uint8 and f"{first}_scale" in entry
    assert opt.state[p][first].dtype == torch.uint8  # the live state is unchanged
    theirs = getattr(torch.optim, name)([p], **kwargs)
    theirs.load_state_dict(copy.deepcopy(saved))  # torch checks nothing at load...
    before = p.detach().clone()
    with pytest.raises((KeyError, AssertionError), match=first):
        theirs.step()  # ...but its step fails at once (Adafactor's: "variance should be ...")
    assert torch.equal(p, before)

    # full_precision_state hands the same state to torch correctly.
    full = getattr(torch.optim, name)([p], **kwargs)
    full.load_state_dict(adamkit.full_precision_state(copy.deepcopy(saved)))
    for key in opt.state[p]:
        if key in MOMENTS:
            expected = adamkit.optim._precision.decode(opt.state[p], key)
            assert torch.equal(full.state[p][key], expected), key
    full.step()
    # And adamkit loads it back bit for bit.
    again = getattr(adamkit, name)([p], state_precision="8bit", **kwargs)
    again.load_state_dict(saved)
    assert again.state[p].keys() == opt.state[p].keys()
    for key, value in opt.state[p].items():
        assert torch.equal(again.state[p][key], value), key


def test_a_saved_entry_written_straight_into_the_state_is_live() -> None:
    # ZeroRedundancyOptimizer.load_state_dict puts each saved entry into its local optimizer's
    # `state` itself (tests/distributed_worker.py resumes one for real).
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = adamkit.Adam([p], state_precision="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    again = adamkit.Adam([p], state_precision="8bit")
    again.state[p] = saved["state"][0]
    assert again.state[p].keys() == opt.state[p].keys()
    opt.step()
    again.step()
    for key, value in opt.state[p].items():
        assert torch.equal(again.state[p][key], value), key
    copied = copy.deepcopy(again)  # torch pickles the state: it stays one that does this
    copied.state[copied.param_groups[0]["params"][0]] = copy.deepcopy(saved["state"][0])
    assert "exp_avg" in next(iter(copied.state.values()))


def test_torch_continues_correctly_from_bf16_state() -> None:
    # Not a trap: torch casts floating-point state to the parameter's dtype when it loads.
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = adamkit.AdamW([p], state_precision="bf16")
    p.grad = torch.randn_like(p)
    opt.step()
    saved = opt.state_dict()
    assert saved["adamkit"]["format"] == 1 and saved["state"][0]["exp_avg"].dtype == torch.bfloat16
    theirs = torch.optim.AdamW([q := p.detach().clone().requires_grad_()])
    theirs.load_state_dict(copy.deepcopy(saved))  # (torch's load keeps `step` shared)
    reference = torch.optim.AdamW([r := p.detach().clone().requires_grad_()])
    reference.load_state_dict(adamkit.full_precision_state(copy.deepcopy(saved)))
    for optimizer, param in ((theirs, q), (reference, r)):
        param.grad = p.grad.clone()
        optimizer.step()
    assert torch.equal(q, r)


def test_a_format_2_state_dict_still_loads() -> None:
    # Written by the release before format 3: the codes under the moments' own keys.
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = adamkit.Adam([p], state_precision="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    live = {k: v.clone() for k, v in opt.state[p].items()}
    old = {**opt.state_dict(), "state": {0: live}, "adamkit": {"format": 2, "version": "0.1.0"}}
    again = adamkit.Adam([p], state_precision="8bit")
    again.load_state_dict(old)
    for key, value in live.items():
        assert torch.equal(again.state[p][key], value), key
    full = adamkit.full_precision_state(old)
    assert full["state"][0]["exp_avg"].dtype == torch.float32
    assert "exp_avg_scale" not in full["state"][0]


def test_loaded_state_is_not_shared_with_the_state_dict() -> None:
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = adamkit.Adam([p], state_precision="8bit")
    p.grad = torch.ones_like(p)
    opt.step()
    saved = opt.state_dict()
    snapshot = {k: v.clone() for k, v in saved["state"][0].items()}
    again = adamkit.Adam([p], state_precision="8bit")
    again.load_state_dict(saved)
    again.step()
    for key, value in saved["state"][0].items():
        assert torch.equal(value, snapshot[key]), key


def test_every_format_up_to_the_current_one_has_files() -> None:
    """Every torch twin the format's release had (the first five in every format), and every
    twin in the current format's."""
    first = {"Adam", "AdamW", "RAdam", "NAdam", "Adamax"}
    for fmt in range(1, STATE_FORMAT + 1):
        names = {p.stem for p in (DATA / f"format{fmt}").glob("*.pt")}
        assert first <= names <= set(TWINNED)
    assert names == set(TWINNED)
