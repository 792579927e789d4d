"""The conformance checks: what a ``torch.optim.Optimizer`` subclass must do to be a drop-in.

Each check takes a :class:`Case` (the optimizer class, one configuration, the run's settings)
and returns ``None`` (pass) or raises :class:`Skip` (the optimizer declines a feature with an
error of its own, or the check does not apply) or :class:`CheckFailed` (with what differs).
Every problem is small and seeded: a (4, 3) weight, a (4,) bias and a 1-element tensor,
gradients drawn from a generator seeded by the step number.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["CHECKS", "SLOW", "Case", "CheckFailed", "Skip"]

SHAPES = ((4, 3), (4,), (1,))


class CheckFailed(AssertionError):
    """The optimizer does not do what the check asks; the message says what differs."""


class Skip(Exception):
    """The check does not apply (the message says why)."""


@dataclass
class Case:
    """One optimizer class and configuration, and how long and how exactly to compare."""

    cls: type[Optimizer]
    config: dict[str, Any]
    steps: int = 5
    reference: type[Optimizer] | None = None
    reference_steps: int = 50
    rtol: float = 1e-5
    atol: float = 1e-6
    extra: dict[str, Any] = field(default_factory=dict)

    def make(self, params: Any, **override: Any) -> Optimizer:
        return self.cls(params, **{**self.config, **override})


# ----------------------------------------------------------------------------- problems
def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES
    ]


def set_grads(params: Sequence[Tensor], step: int) -> None:
    g = torch.Generator().manual_seed(10_000 + step)
    for p in params:
        draw = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if p.is_complex():
            draw = torch.complex(draw, torch.randn(p.shape, generator=g, dtype=torch.float64))
        p.grad = draw.to(p.dtype)


def train(opt: Optimizer, params: Sequence[Tensor], steps: int, start: int = 0) -> None:
    for k in range(start, start + steps):
        set_grads(params, k)
        opt.step()


def state_tensors(opt: Optimizer, params: Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    """``state[i][key]`` for every tensor in the optimizer state, in parameter order."""
    out = []
    for i, p in enumerate(params):
        for key, value in sorted(opt.state.get(p, {}).items()):
            if isinstance(value, Tensor):
                out.append((f"state[params[{i}]][{key!r}]", value))
    return out


def snapshot(opt: Optimizer, params: Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    tensors = [(f"params[{i}]", p) for i, p in enumerate(params)] + state_tensors(opt, params)
    return [(name, t.detach().clone()) for name, t in tensors]


def compare(
    ours: list[tuple[str, Tensor]],
    theirs: list[tuple[str, Tensor]],
    what: str,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
    """Raise :class:`CheckFailed` naming the first tensor that differs (0 tolerance: bitwise)."""
    names = [n for n, _ in ours]
    if names != [n for n, _ in theirs]:
        missing = sorted(set(names) ^ {n for n, _ in theirs})
        raise CheckFailed(f"{what}: the state holds different entries ({', '.join(missing)})")
    for (name, a), (_, b) in zip(ours, theirs, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckFailed(
                f"{what}: {name} is {a.dtype}{tuple(a.shape)}, expected {b.dtype}{tuple(b.shape)}"
            )
        if a.numel() == 0:
            continue
        x, y = torch.view_as_real(a) if a.is_complex() else a, b
        y = torch.view_as_real(y) if y.is_complex() else y
        x, y = x.double(), y.double()
        same = (x == y) | (x.isnan() & y.isnan())
        close = same | ((x - y).abs() <= atol + rtol * y.abs())
        if not bool(close.all()):
            diff = (x - y).abs().nan_to_num(nan=math.inf)
            index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
            raise CheckFailed(
                f"{what}: {name} differs first, max |diff| {diff.max().item():.3g} at index "
                f"{index} ({x[index].item():.9g} vs {y[index].item():.9g})"
            )


def accepts(cls: type, keyword: str) -> bool:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def clone_params(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


# ------------------------------------------------------------------------------- checks
def check_determinism(case: Case) -> None:
    """Two runs from the same start give bit-identical parameters and state."""
    runs = []
    for _ in range(2):
        params = make_params()
        opt = case.make(params)
        train(opt, params, case.steps)
        runs.append(snapshot(opt, params))
    compare(runs[0], runs[1], "two identical runs")


def _resumed(case: Case, restore: Callable[[Optimizer, list[Tensor]], Optimizer]) -> None:
    params = make_params()
    opt = case.make(params)
    train(opt, params, case.steps)
    copies = clone_params(params)
    resumed = restore(opt, copies)
    train(opt, params, case.steps, start=case.steps)
    train(resumed, copies, case.steps, start=case.steps)
    compare(snapshot(resumed, copies), snapshot(opt, params), "resumed against uninterrupted")


def check_state_dict_roundtrip(case: Case) -> None:
    """``load_state_dict(state_dict())`` into a fresh optimizer continues bit for bit."""

    def restore(opt: Optimizer, params: list[Tensor]) -> Optimizer:
        fresh = case.make(params)
        fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
        return fresh

    _resumed(case, restore)


def check_serialization(case: Case) -> None:
    """A state dict through ``torch.save``/``torch.load`` (weights_only), and a deepcopy of
    the optimizer, both continue bit for bit."""

    def saved(opt: Optimizer, params: list[Tensor]) -> Optimizer:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        fresh = case.make(params)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        return fresh

    _resumed(case, saved)
    params = make_params()
    opt = case.make(params)
    train(opt, params, case.steps)
    try:
        twin = copy.deepcopy((opt, params))
        train(twin[0], twin[1], case.steps, start=case.steps)
    except Exception as error:
        raise CheckFailed(
            f"a copy.deepcopy of the optimizer cannot step: {type(error).__name__}: {error}"
        ) from None
    train(opt, params, case.steps, start=case.steps)
    compare(snapshot(twin[0], twin[1]), snapshot(opt, params), "deepcopy against original")


_CHILD = """
import importlib, sys, torch
module, _, name = sys.argv[1].partition(":")
cls = importlib.import_module(module)
for part in name.split("."):
    cls = getattr(cls, part)
saved = torch.load(sys.argv[2], weights_only=False)
params = [p.requires_grad_() for p in saved["params"]]
opt = cls(params, **saved["config"])
opt.load_state_dict(saved["state_dict"])
for k in range(saved["start"], saved["start"] + saved["steps"]):
    g = torch.Generator().manual_seed(10_000 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
    opt.step()
torch.save({"params": [p.detach() for p in params],
            "state": [{k: v for k, v in opt.state[p].items()} for p in params]}, sys.argv[3])
"""


def check_fresh_process(case: Case) -> None:
    """A checkpoint file loaded by another Python process continues bit for bit."""
    where = f"{case.cls.__module__}:{case.cls.__qualname__}"
    if "<locals>" in where or case.cls.__module__ == "__main__":
        raise Skip(f"{where} cannot be imported by another process")
    params = make_params()
    opt = case.make(params)
    train(opt, params, case.steps)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint, result = Path(folder, "in.pt"), Path(folder, "out.pt")
        torch.save(
            {
                "params": [p.detach().clone() for p in params],
                "config": case.config,
                "state_dict": opt.state_dict(),
                "start": case.steps,
                "steps": case.steps,
            },
            checkpoint,
        )
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, where, str(checkpoint), str(result)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if run.returncode != 0:
            raise CheckFailed(f"the other process failed: {run.stderr.strip()[-600:]}")
        theirs = torch.load(result, weights_only=False)
    train(opt, params, case.steps, start=case.steps)
    other = [(f"params[{i}]", p) for i, p in enumerate(theirs["params"])]
    for i, entry in enumerate(theirs["state"]):
        for key, value in sorted(entry.items()):
            if isinstance(value, Tensor):
                other.append((f"state[params[{i}]][{key!r}]", value))
    compare(other, snapshot(opt, params), "another process against this one")


def check_named_parameters(case: Case) -> None:
    """Built from ``named_parameters()``-style pairs it steps as from the tensors, its state
    dict carries the names, and a named checkpoint resumes bit for bit with its names."""
    params, twin = make_params(), make_params()
    names = ["weight", "bias", "scale"]
    try:
        named = case.make(list(zip(names, params, strict=True)))
    except (TypeError, ValueError) as error:
        raise Skip(f"named parameters are refused: {error}") from None
    plain = case.make(twin)
    train(named, params, case.steps)
    train(plain, twin, case.steps)
    compare(snapshot(named, params), snapshot(plain, twin), "named against unnamed")
    held = named.state_dict()["param_groups"][0].get("param_names")
    if held != names:
        raise CheckFailed(f"state_dict()['param_groups'][0]['param_names'] is {held!r}")
    # The same model in a new run: a named checkpoint loads (by position in torch, by name
    # in adamkit) and keeps its names.
    copies = clone_params(params)
    fresh = case.make(list(zip(names, copies, strict=True)))
    fresh.load_state_dict(copy.deepcopy(named.state_dict()))
    loaded = fresh.state_dict()["param_groups"][0].get("param_names")
    if loaded != names:
        raise CheckFailed(f"after loading, param_names is {loaded!r}, not the checkpoint's")
    train(named, params, case.steps, start=case.steps)
    train(fresh, copies, case.steps, start=case.steps)
    compare(snapshot(fresh, copies), snapshot(named, params), "a named checkpoint resumed")


def check_hooks(case: Case) -> None:
    """Step, state_dict and load_state_dict pre- and post-hooks each run once per call."""
    params = make_params()
    opt = case.make(params)
    calls: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: calls.__setitem__(name, calls.get(name, 0) + 1)

    opt.register_step_pre_hook(count("step_pre"))
    opt.register_step_post_hook(count("step_post"))
    opt.register_state_dict_pre_hook(count("state_dict_pre"))
    opt.register_state_dict_post_hook(count("state_dict_post"))
    opt.register_load_state_dict_pre_hook(count("load_state_dict_pre"))
    opt.register_load_state_dict_post_hook(count("load_state_dict_post"))
    train(opt, params, 2)
    opt.load_state_dict(opt.state_dict())
    expected = {
        "step_pre": 2,
        "step_post": 2,
        "state_dict_pre": 1,
        "state_dict_post": 1,
        "load_state_dict_pre": 1,
        "load_state_dict_post": 1,
    }
    if calls != expected:
        raise CheckFailed(f"hook calls {calls}, expected {expected}")


def check_closure(case: Case) -> None:
    """``step(closure)`` calls the closure, returns its loss, and steps as ``step()`` does
    after the same gradients."""
    params, twin = make_params(), make_params()
    opt, plain = case.make(params), case.make(twin)
    for k in range(case.steps):
        calls = 0

        def closure(k: int = k) -> float:
            nonlocal calls
            calls += 1
            set_grads(params, k)
            return float(k)

        loss = opt.step(closure)
        if calls < 1:
            raise CheckFailed("step(closure) did not call the closure")
        if loss is None or float(loss) != float(k):
            raise CheckFailed(f"step(closure) returned {loss!r}, not the closure's loss {k}")
        set_grads(twin, k)
        plain.step()
    compare(snapshot(opt, params), snapshot(plain, twin), "step(closure) against step()")


def check_no_grad_is_a_no_op(case: Case) -> None:
    """A step with no gradients (``zero_grad()``, set_to_none) leaves parameters unchanged."""
    params = make_params()
    opt = case.make(params)
    train(opt, params, 2)
    opt.zero_grad()
    before = [p.detach().clone() for p in params]
    opt.step()
    compare(
        [(f"params[{i}]", p.detach()) for i, p in enumerate(params)],
        [(f"params[{i}]", p) for i, p in enumerate(before)],
        "a step without gradients",
    )


def check_add_param_group(case: Case) -> None:
    """A group added after some steps is stepped from then on, like a fresh optimizer's."""
    params = make_params()
    opt = case.make(params)
    train(opt, params, 2)
    late = make_params(seed=1)[:1]
    alone = clone_params(late)
    opt.add_param_group({"params": late})
    solo = case.make(alone)
    for k in range(case.steps):
        set_grads(params, k)
        set_grads(late, 100 + k)
        set_grads(alone, 100 + k)
        opt.step()
        solo.step()
    compare(
        [("late group's param", late[0].detach())],
        [("late group's param", alone[0].detach())],
        "a group added later against a fresh optimizer on it",
        case.rtol,
        case.atol,
    )


def check_complex(case: Case) -> None:
    """A complex parameter steps as the pair (real, imaginary) of reals, as torch's do."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, generator=g, dtype=torch.complex64).requires_grad_()
    pair = torch.view_as_real(z.detach()).clone().requires_grad_()
    try:
        opt = case.make([z])
        for k in range(case.steps):
            set_grads([z], k)
            opt.step()
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        raise Skip(f"complex parameters are refused: {str(error).splitlines()[0]}") from None
    real = case.make([pair])
    for k in range(case.steps):
        grads = torch.Generator().manual_seed(10_000 + k)  # set_grads' draws: real, imaginary
        re = torch.randn(z.shape, generator=grads, dtype=torch.float64)
        im = torch.randn(z.shape, generator=grads, dtype=torch.float64)
        pair.grad = torch.stack([re, im], dim=-1).float()
        real.step()
    compare(
        [("complex param", torch.view_as_real(z.detach()))],
        [("complex param", pair.detach())],
        "complex against its real view",
        case.rtol,
        case.atol,
    )


def check_dtype(case: Case) -> None:
    """float64 parameters stay float64, and so does their state."""
    params = make_params(torch.float64)
    opt = case.make(params)
    train(opt, params, case.steps)
    for name, t in [(f"params[{i}]", p) for i, p in enumerate(params)] + state_tensors(opt, params):
        if t.is_floating_point() and t.dim() > 0 and t.dtype != torch.float64:
            raise CheckFailed(f"{name} is {t.dtype} after steps on float64 parameters")


def _takes(case: Case, key: str) -> bool:
    """Whether the constructor takes ``key=False`` (a wrapper's ``**kwargs`` may not)."""
    if key in case.config or not accepts(case.cls, key):
        return False
    try:
        case.make(make_params(), **{key: False})
    except TypeError:
        return False
    return True


def check_implementations(case: Case) -> None:
    """Every implementation it offers (``foreach``, ``fused``) agrees with the for-loop."""
    if not _takes(case, "foreach"):
        raise Skip("the constructor takes no foreach=")
    keys = ["foreach"] + (["fused"] if _takes(case, "fused") else [])
    base = make_params()
    loop = case.make(base, **dict.fromkeys(keys, False))
    train(loop, base, case.steps)
    tried = []
    for key in keys:
        params = make_params()
        try:
            opt = case.make(params, **{key: True})
            train(opt, params, case.steps)
        except (RuntimeError, ValueError, NotImplementedError):
            continue  # declined on this device or dtype: its own error, not a wrong answer
        compare(
            snapshot(opt, params), snapshot(loop, base), f"{key}=True against the for-loop",
            case.rtol, case.atol,
        )  # fmt: skip
        tried.append(key)
    if not tried:
        raise Skip("no implementation other than the for-loop runs here")


def check_compile(case: Case) -> None:
    """A training step under ``torch.compile`` matches the eager one."""
    params, twin = make_params(), make_params()
    opt, eager = case.make(params), case.make(twin)

    @torch.compile(fullgraph=False)
    def compiled_step() -> None:
        opt.step()

    for k in range(case.steps):
        set_grads(params, k)
        set_grads(twin, k)
        compiled_step()
        eager.step()
    compare(snapshot(opt, params), snapshot(eager, twin), "compiled against eager",
            case.rtol, case.atol)  # fmt: skip


_BAD = {
    "lr": -1.0,
    "eps": -1.0,
    "weight_decay": -1.0,
    "betas": (1.5, 0.999),
    "momentum": -1.0,
}


def _as_signature_takes(cls: type, key: str, value: Any) -> Any:
    """A bad number where the constructor's default for ``key`` is a pair (Adafactor's
    ``eps=(None, 1e-3)``): the default with its last entry made ``value``."""
    try:
        default = inspect.signature(cls).parameters[key].default
    except (TypeError, ValueError, KeyError):
        return value
    if isinstance(default, tuple) and not isinstance(value, tuple) and default:
        return (*default[:-1], value)
    return value


def check_bad_hyperparameters(case: Case) -> None:
    """Invalid values are refused at construction, with the value in the message."""
    tried = []
    for key, value in _BAD.items():
        if not accepts(case.cls, key):
            continue
        tried.append(key)
        value = _as_signature_takes(case.cls, key, value)
        try:
            case.make(make_params(), **{key: value})
        except (ValueError, TypeError) as error:
            shown = str(
                next(v for v in value if v is not None) if isinstance(value, tuple) else value
            )
            if shown not in str(error) and shown.rstrip("0").rstrip(".") not in str(error):
                raise CheckFailed(f"{key}={value!r} is refused but not named: {error}") from None
            continue
        except Exception as error:
            raise CheckFailed(
                f"{key}={value!r} is refused with {type(error).__name__}, which is not a "
                f"ValueError as torch raises (code catching ValueError misses it): {error}"
            ) from None
        raise CheckFailed(f"{key}={value!r} is accepted")
    if not tried:
        raise Skip("the constructor takes none of " + ", ".join(_BAD))


def check_reference(case: Case) -> None:
    """Parity with a reference implementation over many steps, parameters and the state
    entries both keep, within the stated tolerances."""
    if case.reference is None:
        raise Skip("no reference given")
    params, twin = make_params(), make_params()
    opt = case.make(params)
    config = {k: v for k, v in case.config.items() if accepts(case.reference, k)}
    reference = case.reference(twin, **config)
    train(opt, params, case.reference_steps)
    train(reference, twin, case.reference_steps)
    ours, theirs = dict(snapshot(opt, params)), dict(snapshot(reference, twin))
    common = [n for n in ours if n in theirs and not n.endswith("['step']")]
    compare(
        [(n, ours[n]) for n in common], [(n, theirs[n]) for n in common],
        f"{case.reference.__module__}.{case.reference.__qualname__} after "
        f"{case.reference_steps} steps", case.rtol, case.atol,
    )  # fmt: skip


#: Every check by name, in the order they run.
CHECKS: dict[str, Callable[[Case], None]] = {
    "determinism": check_determinism,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "serialization": check_serialization,
    "fresh_process": check_fresh_process,
    "named_parameters": check_named_parameters,
    "hooks": check_hooks,
    "closure": check_closure,
    "no_grad_is_a_no_op": check_no_grad_is_a_no_op,
    "add_param_group": check_add_param_group,
    "complex": check_complex,
    "dtype": check_dtype,
    "implementations": check_implementations,
    "bad_hyperparameters": check_bad_hyperparameters,
    "reference": check_reference,
    "compile": check_compile,
}
#: Checks that take seconds each (a process start, a compilation): opt in by name.
SLOW = ("compile",)


def describe(config: dict[str, Any]) -> str:
    return json.dumps(config, default=repr, sort_keys=True) if config else "{}"
