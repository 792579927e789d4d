"""Checking a state dict before it is loaded: format version, parameter names, shapes.

torch loads optimizer state by position and checks nothing but the number of parameters per
group (pytorch issues #1489, #34660): a checkpoint saved with parameters in another order, or
from a changed model, loads silently into the wrong tensors. Here every check runs before the
optimizer is touched, so a refused checkpoint changes nothing:

* the ``"adamkit"`` entry (format version) is read, and a format newer than this release's is
  refused; checkpoints without it (torch.optim's, or adamkit's before formats) load as format 1;
* the step counters must be finite (``step`` also >= 0): a corrupt one would turn every
  parameter into NaN at the next step;
* when both the checkpoint and the optimizer know their parameters' names (``param_names``,
  saved by torch >= 2.6 when the optimizer was built from ``named_parameters()``), state is
  matched by name, and ``strict`` decides what a missing, unexpected or mismatched name means;
* otherwise state is matched by position, as torch does, but group sizes, state shapes and the
  state keys the algorithm needs are checked first.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._algorithms import SCALAR_KEYS
from ._core import local, step_dtype
from ._precision import (
    blocks,
    convert,
    decode,
    is_sharded,
    reshardable,
    scale_key,
    shard_like,
    sharded_like,
    state_format,
)
from ._validation import OPTIMIZER_WIDE, check_flag, check_group, check_optimizer_wide

#: What a stepped parameter of a saved group keeps: ``needed(saved_group, param)`` -> each
#: state entry's name and, for a state tensor, its shape (``None``: a 0-d counter; ``ABSENT``:
#: a state of the algorithm this parameter must not have, Adafactor's ``variance`` of a matrix).
Needed = Callable[[Mapping[str, Any], Tensor], Mapping[str, "tuple[int, ...] | str | None"]]
ABSENT = "absent"

if TYPE_CHECKING:
    from ._base import AdamFamily

__all__ = [
    "STATE_FORMAT",
    "LiveState",
    "LoadReport",
    "check_format",
    "code_key",
    "live_entry",
    "live_state",
    "load_into",
    "prepare",
    "saved_entry",
    "saved_state_dict",
    "scalar_state",
]

#: The newest optimizer state format this release reads and writes
#: (``state_dict()["adamkit"]["format"]``). Format 1: every moment is a tensor shaped like its
#: parameter, as in torch.optim. Format 2: a moment may also be 8-bit codes (uint8, shaped like
#: the parameter) under the moment's own key, with its block scales in ``<key>_scale``; torch
#: loaded such a file without complaint and then stepped with the codes as moments. Format 3:
#: the codes are under ``<key>_codes`` instead (scales unchanged), so the moment's key is absent
#: and torch's step fails on it at once (KeyError) rather than training on garbage.
#: ``state_dict()`` writes 3 only when the state holds codes, so other checkpoints stay readable
#: by format-1 releases; every format loads.
STATE_FORMAT = 3
_SHOWN = 8


class LoadReport(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` could not load, by parameter name."""

    missing: list[str]  # parameters of this optimizer the checkpoint has no state for
    unexpected: list[str]  # parameters in the checkpoint this optimizer does not have
    mismatched: list[str]  # present in both, but the saved state does not fit the parameter


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _describe(t: Tensor) -> str:
    return f"a {t.dtype} tensor of shape {tuple(t.shape)}"


def code_key(key: str) -> str:
    """The state dict entry holding moment ``key``'s 8-bit codes (format 3)."""
    return f"{key}_codes"


def _coded(entry: Mapping[str, Any], key: str) -> bool:
    value = entry[key]
    return isinstance(value, Tensor) and value.dtype == torch.uint8 and scale_key(key) in entry


def saved_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A live state entry as ``state_dict()`` writes it: 8-bit codes moved from the moment's
    key to :func:`code_key`'s (the live state keeps them under the moment's key, where the
    kernels read them)."""
    return {code_key(k) if _coded(entry, k) else k: v for k, v in entry.items()}


def live_entry(entry: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A saved state entry (any format) in the live layout: :func:`saved_entry` undone."""
    out = dict(entry)
    for key, value in entry.items():
        base = key.removesuffix("_codes")
        if base == key:
            continue
        if not isinstance(value, Tensor) or value.dtype != torch.uint8:
            shown = _describe(value) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"load_state_dict: {where}state {key!r} should hold the 8-bit codes of {base!r} "
                f"(uint8), it is {shown}"
            )
        if base in entry:
            raise ValueError(
                f"load_state_dict: {where}state has both {base!r} and its codes {key!r}"
            )
        out[base] = out.pop(key)
    return out


class LiveState(defaultdict[Any, Any]):
    """``optimizer.state`` (torch's ``defaultdict(dict)``) that keeps a parameter's entry in the
    live layout when it is given one in a state dict's (8-bit codes under ``<moment>_codes``):
    ``ZeroRedundancyOptimizer.load_state_dict`` writes the saved entries straight into its
    local optimizer's state, past ``load_state_dict``. Reads are a plain dict's."""

    #: Counts every change of which entry a key holds (not changes inside an entry), so a
    #: step can keep the list of its parameters' entries while nothing was reassigned.
    mutations = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, Mapping) and any(
            isinstance(k, str) and k.endswith("_codes") for k in value
        ):
            value = live_entry(value)
        self.mutations += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.mutations += 1
        super().__delitem__(key)

    def clear(self) -> None:
        self.mutations += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self.mutations += 1
        return super().pop(*args)

    def popitem(self) -> tuple[Any, Any]:
        self.mutations += 1
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> LiveState:  # type: ignore[misc]
        self.update(other)
        return self


def live_state(state: Mapping[Any, Any]) -> LiveState:
    """``state`` (an optimizer's) as a :class:`LiveState`."""
    live = LiveState(dict)
    for key, value in state.items():
        live[key] = value
    return live


def scalar_state(value: Any, dtype: torch.dtype) -> Tensor:
    """A 0-d CPU tensor of ``dtype`` holding a scalar state entry (``step``, ``mu_product``)."""
    if isinstance(value, Tensor):
        if value.dim() == 0 and value.dtype == dtype and value.device.type == "cpu":
            return value.clone()  # never shared with the caller's state dict
        value = value.item()
    return torch.tensor(float(value), dtype=dtype)


def check_format(state_dict: Any, version: str) -> None:
    """Refuse anything that is not an optimizer state dict this release can read."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "load_state_dict: expected a dict with 'state' and 'param_groups', got "
            f"{type(state_dict).__name__}"
        )
    missing = [k for k in ("state", "param_groups") if k not in state_dict]
    if missing:
        raise ValueError(f"load_state_dict: not an optimizer state dict (no {missing} entry)")
    if not isinstance(state_dict["state"], Mapping):
        raise TypeError("load_state_dict: 'state' must be a dict of per-parameter state")
    groups = state_dict["param_groups"]
    if not isinstance(groups, list) or not all(
        isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups
    ):
        raise TypeError("load_state_dict: 'param_groups' must be a list of dicts with 'params'")
    listed = {i for g in groups for i in g["params"] if isinstance(i, int | str)}
    # An integer key is a parameter's index: one no group lists is state loaded into nothing.
    # Other keys are entries a user put in `optimizer.state` beside the parameters', which
    # torch saves and loads unchanged.
    orphans = [k for k in state_dict["state"] if isinstance(k, int) and k not in listed]
    if orphans:
        raise ValueError(
            f"load_state_dict: the checkpoint has state for {_listing([str(k) for k in orphans])}, "
            "which no saved param group lists"
        )
    meta = state_dict.get("adamkit")
    if meta is None:
        return  # torch.optim's checkpoints, and adamkit's from before formats: format 1
    fmt = meta.get("format") if isinstance(meta, Mapping) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ValueError(f"load_state_dict: malformed 'adamkit' entry {meta!r}")
    if fmt > STATE_FORMAT:
        raise ValueError(
            f"load_state_dict: this checkpoint was written by adamkit {meta.get('version', '?')} "
            f"in state format {fmt}; adamkit {version} reads formats up to {STATE_FORMAT}. "
            "Upgrade adamkit to load it."
        )


def _misfit(
    param: Tensor, entry: Any, needed: Mapping[str, tuple[int, ...] | str | None]
) -> str | None:
    """Why a parameter's saved state cannot belong to ``param``, or None when it fits.

    ``needed``: the entries a stepped parameter keeps, with each state tensor's shape (``None``:
    the 0-d counters); a state tensor it does not name must be shaped like the parameter."""
    if not isinstance(entry, Mapping):
        return f"its state is a {type(entry).__name__}, not a dict"
    if not entry:
        return None  # never stepped: nothing to fit
    extra = [k for k, v in needed.items() if v == ABSENT and k in entry]
    if extra:
        kept = [k for k, v in needed.items() if v not in (ABSENT, None)]
        return (
            f"its state has {extra}, which a parameter of shape {tuple(param.shape)} does not "
            f"keep (it keeps {kept})"
        )
    absent = [k for k, v in needed.items() if k not in entry and v != ABSENT]
    if absent:
        return (
            f"its state lacks {absent} (it has {sorted(entry)}): a checkpoint of another optimizer?"
        )
    for key, value in entry.items():
        if key in SCALAR_KEYS:
            # Older torch saved `step` as a Python number; it is converted on load.
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(value, Tensor):
                if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
                    return f"state {key!r} should hold one real number, it is {_describe(value)}"
            elif not is_number or not math.isfinite(value):
                return f"state {key!r} should hold one real number, it is {value!r}"
            continue
        if not isinstance(value, Tensor):
            return f"state {key!r} is {type(value).__name__} {value!r}, not a tensor"
        if key.endswith("_scale") and key.removesuffix("_scale") in entry:
            count = blocks(param.numel())
            if value.dim() != 1 or value.numel() != count or not value.is_floating_point():
                return (
                    f"state {key!r} should hold {count} block scales (a 1-d float tensor), "
                    f"it is {_describe(value)}"
                )
            continue
        expected = needed.get(key)
        shape = expected if isinstance(expected, tuple) else tuple(param.shape)
        if tuple(value.shape) != shape:
            whose = "the parameter" if shape == tuple(param.shape) else "it should have"
            return f"state {key!r} has shape {tuple(value.shape)}, {whose} {shape}"
        if value.dtype == torch.uint8 and not param.is_complex():
            if scale_key(key) not in entry:
                return f"state {key!r} holds 8-bit codes but the entry has no {scale_key(key)!r}"
            continue
        if value.is_complex() != param.is_complex() or not (
            value.is_floating_point() or value.is_complex()
        ):
            return f"state {key!r} is {value.dtype}, which cannot hold a {param.dtype} parameter's"
    return None


def _saved_labels(state_dict: Mapping[str, Any]) -> dict[Any, str]:
    """How an error names each parameter of a checkpoint: its saved name, else its place."""
    labels = {}
    for g, group in enumerate(state_dict["param_groups"]):
        names = group.get("param_names")
        for i, saved_id in enumerate(group["params"]):
            if isinstance(names, list) and i < len(names):
                labels[saved_id] = f"parameter {names[i]!r}"
            else:
                labels[saved_id] = f"parameter #{i} of param group {g}"
    return labels


def _check_counter(key: str, value: Any, where: str) -> None:
    """Refuse a ``step`` that is negative or non-finite, or a non-finite ``mu_product``: they
    load as numbers, and the next step turns every parameter into NaN. (What is not one real
    number at all is left to :func:`_misfit`'s message.)"""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return
        number = float(local(value).item())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        return
    if key == "step" and not (math.isfinite(number) and number >= 0):
        raise ValueError(
            f"load_state_dict: {where}state 'step' is {number!r} (expected a finite number "
            ">= 0): a corrupt checkpoint"
        )
    if not math.isfinite(number):
        raise ValueError(
            f"load_state_dict: {where}state {key!r} is {number!r} (expected a finite number): "
            "a corrupt checkpoint"
        )


def _live_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with every parameter's entry in the live layout (:func:`live_entry`) and
    its counters checked. Entries that are no parameter's (torch passes them through) are
    left alone."""
    labels = _saved_labels(state_dict)
    state = {}
    for saved_id, entry in state_dict["state"].items():
        if saved_id in labels and isinstance(entry, Mapping):
            where = f"{labels[saved_id]}: "
            entry = live_entry(entry, where)
            for key in SCALAR_KEYS:
                if key in entry:
                    _check_counter(key, entry[key], where)
        state[saved_id] = entry
    return {**state_dict, "state": state}


def prepare(
    state_dict: Mapping[str, Any],
    groups: list[dict[str, Any]],
    needed: Needed,
    strict: bool,
) -> tuple[dict[str, Any], LoadReport]:
    """Check ``state_dict`` against the optimizer's ``groups`` and return it in torch's
    positional layout for this optimizer (and the live state layout: 8-bit codes under the
    moment's key), with the report of what was left out.

    ``needed(saved_group, param)``: the state a stepped ``param`` of that group must keep
    (see :func:`_misfit`).
    Raises (and so changes nothing) on anything that would load state into the wrong place.
    """
    state_dict = _live_state(state_dict)
    saved_groups = state_dict["param_groups"]
    saved_state = state_dict["state"]
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this "
            f"optimizer {len(groups)}"
        )
    named = all(g.get("param_names") is not None for g in [*groups, *saved_groups])
    if named:
        return _by_name(state_dict, groups, needed, strict)
    for i, (group, saved) in enumerate(zip(groups, saved_groups, strict=True)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                f"load_state_dict: param group {i} of the checkpoint has {len(saved['params'])} "
                f"parameters, this optimizer's {len(group['params'])}"
            )
        for position, (param, saved_id) in enumerate(
            zip(group["params"], saved["params"], strict=True)
        ):
            if saved_id in saved_state:
                why = _misfit(param, saved_state[saved_id], needed(saved, param))
                if why:
                    raise ValueError(
                        f"load_state_dict: parameter #{position} of param group {i} does not "
                        f"match the checkpoint: {why}. Without parameter names, state is "
                        "matched by position: build the optimizer from named_parameters() "
                        "to match by name."
                    )
    return dict(state_dict), LoadReport([], [], [])


def _by_name(
    state_dict: Mapping[str, Any],
    groups: list[dict[str, Any]],
    needed: Needed,
    strict: bool,
) -> tuple[dict[str, Any], LoadReport]:
    saved_state = state_dict["state"]
    saved: dict[str, tuple[Any, Mapping[str, Any]]] = {}  # name -> (saved id, its group)
    for group in state_dict["param_groups"]:
        names, ids = group["param_names"], group["params"]
        if len(names) != len(ids):
            raise ValueError("load_state_dict: a saved group's param_names and params differ")
        for name, saved_id in zip(names, ids, strict=True):
            if name in saved:
                raise ValueError(f"load_state_dict: the checkpoint names {name!r} twice")
            saved[name] = (saved_id, group)
    current = [name for g in groups for name in g["param_names"]]
    missing = [n for n in current if n not in saved]
    unexpected = [n for n in saved if n not in set(current)]
    mismatched, reasons = [], []
    params = {n: p for g in groups for n, p in zip(g["param_names"], g["params"], strict=True)}
    for name in current:
        if name in saved and saved[name][0] in saved_state:
            saved_id, group = saved[name]
            why = _misfit(params[name], saved_state[saved_id], needed(group, params[name]))
            if why:
                mismatched.append(name)
                reasons.append(f"{name!r}: {why}")
    if strict and (missing or unexpected or mismatched):
        problems = []
        if missing:
            problems.append(f"missing from the checkpoint: {_listing(missing)}")
        if unexpected:
            problems.append(f"not in this optimizer: {_listing(unexpected)}")
        if mismatched:
            problems.append("not matching: " + "; ".join(reasons[:_SHOWN]))
        raise ValueError(
            "load_state_dict: the checkpoint's parameters do not match this optimizer's by "
            "name (" + " | ".join(problems) + "); pass strict=False to load what matches"
        )
    # Rewrite in torch's positional layout for this optimizer: ids 0..n-1 in group order.
    state: dict[int, Any] = {}
    new_groups = []
    index = 0
    for group, saved_group in zip(groups, state_dict["param_groups"], strict=True):
        ids = []
        for name in group["param_names"]:
            if name in saved and name not in mismatched and saved[name][0] in saved_state:
                state[index] = saved_state[saved[name][0]]
            ids.append(index)
            index += 1
        new_groups.append({**saved_group, "params": ids, "param_names": list(group["param_names"])})
    listed = {saved_id for saved_id, _ in saved.values()}
    state.update((k, v) for k, v in saved_state.items() if k not in listed)  # not parameters'
    return {**state_dict, "state": state, "param_groups": new_groups}, LoadReport(
        missing, unexpected, mismatched
    )


# Settings of how this optimizer runs and stores its state, not of the math: a loaded
# checkpoint keeps the live optimizer's (and its state is converted to this storage).
_EXECUTION_KEYS = (
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "state_precision",
    "stochastic_rounding",
)
#: adamkit's update options (``optim/_modifiers.py``), kept when a checkpoint lacks them.
_OPTION_KEYS = ("cautious", "update_clipping")


def saved_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """torch's state dict of an adamkit optimizer (``Optimizer.state_dict()``) as adamkit saves
    it: each parameter's entry in its saved form, and ``"adamkit": {"format", "version"}``."""
    from .. import __version__

    parameters = {i for group in state["param_groups"] for i in group["params"]}
    # torch's entries are the live state dicts: replace, never modify them. An entry that
    # is no parameter's (`optimizer.state["key"] = value`) passes through, as in torch.
    coded = False
    for i, entry in state["state"].items():
        if i in parameters and isinstance(entry, Mapping):
            state["state"][i] = entry = saved_entry(reshardable(entry))
            coded = coded or any(
                isinstance(v, Tensor) and v.dtype == torch.uint8 for v in entry.values()
            )
    state["adamkit"] = {"format": STATE_FORMAT if coded else 1, "version": __version__}
    return state


def load_into(
    opt: AdamFamily,
    state_dict: dict[str, Any],
    strict: bool,
    torch_load: Callable[[dict[str, Any]], None],
) -> LoadReport:
    """:meth:`AdamFamily.load_state_dict` (which documents it); ``torch_load`` is torch's own
    ``Optimizer.load_state_dict`` of ``opt``, run on the checked, positional state dict."""
    from .. import __version__

    check_format(state_dict, __version__)

    def needed(
        saved_group: Mapping[str, Any], param: Tensor
    ) -> dict[str, tuple[int, ...] | str | None]:
        group = {**opt.defaults, **saved_group}
        if "amsgrad" in group:  # it decides which state to expect: it must be a flag
            saved = state_dict.get("param_groups", [])
            index = next((i for i, g in enumerate(saved) if g is saved_group), "?")
            check_flag("amsgrad", group["amsgrad"], f"loaded param group {index}: ")
        counters = dict.fromkeys(("step", *opt._scalar_keys))
        others = dict.fromkeys(opt.algorithm.states, ABSENT)  # (only a layout leaves some out)
        return {**counters, **others, **opt._state_shapes(param, group)}

    positional, report = prepare(state_dict, opt.param_groups, needed, strict)
    before = (opt.state, opt.param_groups)
    opt.__dict__.pop("_fused_plans", None)  # the state tensors are about to be replaced
    execution = [{k: g[k] for k in _EXECUTION_KEYS if k in g} for g in opt.param_groups]
    # adamkit's own update options, which torch's checkpoints never carry: a checkpoint that
    # lacks them leaves each group's as it is (not the defaults).
    options = [{k: g[k] for k in _OPTION_KEYS if k in g} for g in opt.param_groups]
    # torch's load ends by calling the post-hooks, before the settings below are restored
    # and the state converted: they would see a half-loaded optimizer (the checkpoint's
    # `foreach`). Held back here, they run at the end.
    post_hooks = opt._optimizer_load_state_dict_post_hooks
    try:
        opt._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            torch_load(positional)
        finally:
            opt._optimizer_load_state_dict_post_hooks = post_hooks
        for index, (group, ex, kept) in enumerate(
            zip(opt.param_groups, execution, options, strict=True)
        ):
            for key, value in {**opt.defaults, **kept}.items():
                group.setdefault(key, value)
            group.update(ex)
            group.update(opt._pinned())
            where = f"loaded param group {index}: "
            row = opt.algorithm
            check_group(group, type(opt).__name__, where, row)
        check_optimizer_wide(opt.param_groups, "load_state_dict: in the checkpoint, ")
        # Scalars as this version keeps them: 0-d CPU tensors (an older torch saved `step`
        # as a number; a fused GPU run keeps it on the GPU). Entries that are no parameter's
        # stay as they were saved, as torch keeps them.
        for p in (p for group in opt.param_groups for p in group["params"]):
            entry = opt.state.get(p, {})
            for key in ("step", *opt._scalar_keys):
                if key in entry:
                    entry[key] = scalar_state(entry[key], step_dtype())
        _convert_loaded(opt, positional)
    except Exception:
        opt.state, opt.param_groups = before
        raise
    for key in OPTIMIZER_WIDE:  # a group added later takes the loaded setting
        opt.defaults[key] = opt.param_groups[0][key]
    for hook in opt._optimizer_load_state_dict_post_hooks.values():
        hook(opt)
    return report


def _convert_loaded(opt: AdamFamily, positional: Mapping[str, Any]) -> None:
    """Store each loaded moment in this optimizer's format, from the checkpoint's own
    tensors (torch's loader has cast floating-point state to the parameter's dtype)."""
    saved_state = positional["state"]
    for group, saved_group in zip(opt.param_groups, positional["param_groups"], strict=True):
        for p, saved_id in zip(group["params"], saved_group["params"], strict=True):
            saved = saved_state.get(saved_id)
            if not saved:
                continue
            entry = opt.state[p]
            moments = state_format(p, group["state_precision"])
            for key in opt._state_shapes(p, group):
                fmt = opt._state_format(p, group, key, moments)
                entry.pop(scale_key(key), None)
                source = saved
                if is_sharded(p) and not is_sharded(saved[key]):
                    # A full (unsharded) checkpoint: take this process's part of it.
                    source = {key: shard_like(p, decode(saved, key).to(local(p).device))}
                for name, value in convert(source, key, fmt, p).items():
                    if is_sharded(p) and not is_sharded(value) and name == key:
                        value = sharded_like(p, value)  # codes are sharded as p is
                    entry[name] = value.to(p.device)
