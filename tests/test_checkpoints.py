"""torch.optim checkpoints load into adamkit and the reverse; training continues as if the
original optimizer had gone on. State uses torch's schema and key names."""

from __future__ import annotations

import io

import pytest
import torch

import adamkit

from .problems import clone, grad_stream, make_params, set_grads
from .registry import ALGORITHMS, CASES, TABLE, TWINNED, Case, params
from .test_parity import assert_optimizers_equal, torch_tolerance

# One case per algorithm and flag set that changes the state (amsgrad), on both paths.
EXCHANGE_CASES = [c for c in CASES if not c.kwargs.get("maximize") and "lr" not in c.kwargs]


def _through_bytes(state_dict: dict) -> dict:
    """What torch.save + torch.load(weights_only=True) gives back: a real file round trip."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@params(EXCHANGE_CASES)
@pytest.mark.parametrize("direction", ["torch_to_adamkit", "adamkit_to_torch"])
def test_checkpoint_exchange_continues_exactly(case: Case, direction: str) -> None:
    # Torch's side runs its foreach path (it has no fused RAdam, NAdam or Adamax).
    theirs = {k: v for k, v in case.kwargs.items() if k != "fused"}
    theirs["foreach"] = case.kwargs.get("foreach", True)
    ours = {"foreach": True, **case.kwargs} if "fused" not in case.kwargs else case.kwargs
    (first, first_kwargs), (second, second_kwargs) = (
        ((case.torch, theirs), (case.ours, ours))
        if direction == "torch_to_adamkit"
        else ((case.ours, ours), (case.torch, theirs))
    )
    ps = case.twin_params()
    original = first(ps, **first_kwargs)
    stream = list(grad_stream(ps, 60))
    for grads in stream[:30]:
        set_grads(ps, grads)
        original.step()
    checkpoint = _through_bytes(original.state_dict())

    resumed_p = clone(ps)
    resumed = second(resumed_p, **second_kwargs)
    resumed.load_state_dict(checkpoint)
    for grads in stream[30:]:
        set_grads(ps, grads)
        set_grads(resumed_p, grads)
        original.step()
        resumed.step()
    assert_optimizers_equal(
        resumed, original, resumed_p, ps, **torch_tolerance(case, torch.float32)
    )


@pytest.mark.parametrize(
    "name,amsgrad", [(n, False) for n in ALGORITHMS] + [("Adam", True), ("AdamW", True)]
)
def test_state_dict_schema_is_torchs(name: str, amsgrad: bool) -> None:
    case = Case(name, {"amsgrad": True} if amsgrad else {})
    ps, qs = case.twin_params(), case.twin_params()
    ours, theirs = case.ours(ps, **case.kwargs), case.torch(qs, **case.kwargs)
    for grads in grad_stream(ps, 3, skip=False):
        set_grads(ps, grads)
        set_grads(qs, grads)
        ours.step()
        theirs.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(b) == {"state", "param_groups"}
    assert set(a) == {"state", "param_groups", "adamkit"}  # the format entry torch ignores
    assert a["adamkit"] == {"format": 1, "version": adamkit.__version__}
    # adamkit's own options (and `fused` for RAdam, NAdam, Adamax, which torch's lack); torch's
    # load carries keys it does not use.
    extra = {"nonfinite", "max_grad_norm", "state_precision", "stochastic_rounding"} | (
        set() if "fused" in b["param_groups"][0] else {"fused"}
    )
    extra |= {*(["cautious"] if TABLE[name].cautious else [])}
    extra |= {*(["update_clipping"] if TABLE[name].clipped_by else [])}
    assert set(a["param_groups"][0]) == set(b["param_groups"][0]) | extra
    assert set(a["state"]) == set(b["state"])
    row = TABLE[name]  # what the table says adamkit keeps, which must be what torch keeps
    for index, entry in a["state"].items():
        shapes = row.shapes(tuple(ps[index].shape), amsgrad)
        assert set(entry) == set(b["state"][index]) == {"step", *shapes, *row.scalars}
        for key, value in entry.items():
            other = b["state"][index][key]
            assert (value.dtype, value.device, value.shape) == (
                other.dtype,
                other.device,
                other.shape,
            )


def test_named_parameters_are_kept_in_state_dict() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    import adamkit

    opt = adamkit.AdamW(model.named_parameters())
    assert opt.state_dict()["param_groups"][0]["param_names"] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_adamw_stays_decoupled_after_loading_an_adam_checkpoint() -> None:
    import adamkit

    ps = make_params()
    torch_adam = torch.optim.Adam(ps, weight_decay=0.1)
    opt = adamkit.AdamW(clone(ps), weight_decay=0.1)
    opt.load_state_dict(torch_adam.state_dict())
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


def test_loading_keeps_the_live_execution_settings() -> None:
    import adamkit

    ps = make_params()
    gpu_style = torch.optim.Adam(ps, foreach=False)
    state = gpu_style.state_dict()
    state["param_groups"][0]["fused"] = True  # as saved by a fused (GPU) torch run
    opt = adamkit.Adam(clone(ps), foreach=True)
    opt.load_state_dict(state)
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is True


def test_failed_load_leaves_the_optimizer_unchanged() -> None:
    import adamkit

    ps = make_params()
    opt = adamkit.Adam(ps, lr=0.01)
    for grads in grad_stream(ps, 3):
        set_grads(ps, grads)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
    bad = opt.state_dict()
    bad = {"state": bad["state"], "param_groups": [dict(bad["param_groups"][0], lr=-1.0)]}
    with pytest.raises(ValueError, match=r"loaded param group 0: Invalid learning rate: -1\.0"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.01
    for key, value in opt.state[ps[0]].items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("named", [False, True], ids=["by_position", "by_name"])
@pytest.mark.parametrize("name", TWINNED)
def test_entries_that_are_no_parameters_pass_through_as_in_torch(name: str, named: bool) -> None:
    model = torch.nn.Linear(3, 2)
    params = model.named_parameters() if named else model.parameters()
    precision = TABLE[name].precisions[-1]  # 8-bit state where the algorithm takes it
    ours = getattr(adamkit, name)(params, state_precision=precision)
    theirs = getattr(torch.optim, name)(model.parameters())
    for opt in (ours, theirs):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        opt.state["extra"] = 1
        opt.state["notes"] = {"epoch": 3}
    saved = _through_bytes(ours.state_dict())
    assert saved["state"]["extra"] == 1 == theirs.state_dict()["state"]["extra"]
    assert saved["state"]["notes"] == {"epoch": 3}
    assert adamkit.full_precision_state(saved)["state"]["extra"] == 1
    assert adamkit.state_memory(ours).total_bytes > 0

    again = getattr(adamkit, name)(
        model.named_parameters() if named else model.parameters(), state_precision=precision
    )
    again.load_state_dict(saved)
    assert again.state["extra"] == 1 and again.state["notes"] == {"epoch": 3}
    for key, value in ours.state[model.weight].items():
        assert torch.equal(again.state[model.weight][key], value), key
    getattr(torch.optim, name)(model.parameters()).load_state_dict(theirs.state_dict())


def test_load_post_hooks_see_the_loaded_optimizer_once_each_in_order() -> None:
    p = torch.nn.Parameter(torch.randn(64, 80))
    saver = torch.optim.Adam([p], foreach=False)  # a torch run, fp32 state
    p.grad = torch.ones_like(p)
    saver.step()
    opt = adamkit.Adam([p], foreach=True, state_precision="8bit")
    seen: list[tuple[str, object, torch.dtype]] = []

    def hook(label: str):  # type: ignore[no-untyped-def]
        def record(optimizer: torch.optim.Optimizer) -> None:
            state = optimizer.state[p]
            seen.append((label, optimizer.param_groups[0]["foreach"], state["exp_avg"].dtype))

        return record

    opt.register_load_state_dict_post_hook(hook("second"))
    opt.register_load_state_dict_post_hook(hook("first"), prepend=True)
    # A hook may keep its own entry in the state, as with torch.
    opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("loaded", True))
    opt.load_state_dict(saver.state_dict())
    # The live settings and the converted state: what the load ends with.
    assert seen == [("first", True, torch.uint8), ("second", True, torch.uint8)]
    assert opt.state["loaded"] is True
    assert opt.param_groups[0]["foreach"] is True
    opt.step()

    # A failed load calls no hook, and the hooks stay registered.
    bad = saver.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.load_state_dict(bad)
    assert len(seen) == 2
    opt.load_state_dict(saver.state_dict())
    assert len(seen) == 4
