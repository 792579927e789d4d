"""The one optimizer base every adamkit optimizer derives from.

It is thin on purpose: it validates arguments, creates state lazily (with torch's state names,
so checkpoints move between torch.optim and adamkit), groups a parameter group's tensors into
buckets by device and dtype, and hands each bucket to the algorithm's update rule on the chosen
execution path. The math lives in the rules (``adam.py``, ``radam.py``, ...).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._algorithms import Algorithm
from ._checkpoint import (
    STATE_FORMAT,
    LiveState,
    LoadReport,
    check_format,
    live_state,
    prepare,
    saved_entry,
    scalar_state,
)
from ._core import Bucket, Hyper, Rule, local, real_view
from ._device import TorchFusedPlan, TritonPlan, gpu_path, gpu_plan
from ._fused import (
    OVERLAPPING,
    FusedPlan,
    Layout,
    Reading,
    Storage,
    bump_versions,
    check_scales,
    check_state_sizes,
    fused_unsupported,
    kernel_available,
    prepare_counters,
)
from ._paths import DIFFERENTIABLE, PATHS, TensorOps
from ._precision import (
    convert,
    decode,
    is_sharded,
    needs_widening,
    reshardable,
    scale_key,
    shard_like,
    sharded_like,
    state_format,
    stored_format,
    widened_step,
)
from ._precision import zeros as zero_state
from ._validation import (
    OPTIMIZER_WIDE,
    check_flag,
    check_group,
    check_optimizer_wide,
    scalar_value,
)

__all__ = ["AdamFamily", "ParamsT", "group_defaults", "step_dtype"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


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


def group_defaults(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer constructor's arguments (its ``locals()``) as a param group's defaults:
    every argument but ``self`` and ``params``, with ``betas`` given as a list made a tuple."""
    defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}
    if isinstance(defaults.get("betas"), list):
        defaults["betas"] = tuple(defaults["betas"])
    return defaults


def step_dtype() -> torch.dtype:
    # torch keeps `step` as a CPU float32 tensor (float64 when that is the default dtype).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _label_of(group: dict[str, Any], param: Tensor) -> str:
    index = next(i for i, p in enumerate(group["params"]) if p is param)
    return _param_label(group, index)


def _param_label(group: dict[str, Any], index: int) -> str:
    names = group.get("param_names")
    return f"parameter {names[index]!r}" if names else f"parameter #{index}"


class AdamFamily(Optimizer):
    """Base class: validation, lazy state, device/dtype buckets, dispatch to a rule.

    Subclasses set :attr:`algorithm` (their row of the table, which says what state they keep
    and which kernel steps them) and :attr:`_rule` (the pure update function), and take
    torch's signature, passing ``group_defaults(locals())`` here.
    """

    algorithm: ClassVar[Algorithm]
    _rule: ClassVar[Rule]

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        check_group(defaults, type(self).__name__, own=self.algorithm.own)
        super().__init__(params, defaults)
        if any(g.get("fused") for g in self.param_groups) and self.algorithm.kernel is None:
            raise RuntimeError(
                f"adamkit.{type(self).__name__}(fused=True): no fused kernel steps "
                f"{self.algorithm.name}; leave fused=None to use the multi-tensor path"
            )
        if any(g.get("fused") for g in self.param_groups) and not kernel_available():
            from ..kernels import unavailable_reason

            raise RuntimeError(
                f"adamkit.{type(self).__name__}(fused=True): the fused CPU kernel is "
                f"unavailable ({unavailable_reason()}); leave fused=None to use the "
                "multi-tensor path"
            )
        #: Steps skipped by ``nonfinite="skip"``, and the global gradient norm of the last
        #: step that computed one (``nonfinite`` or ``max_grad_norm`` set).
        self.skipped_steps = 0
        self.last_grad_norm: float | None = None
        self._last_step_skipped = False
        self.state = live_state(self.state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch pickles (and deep-copies) only defaults, state and param_groups; its
        # load_state_dict comes here too, with a plain defaultdict.
        super().__setstate__(state)
        if not isinstance(self.state, LiveState):
            self.state = live_state(self.state)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("last_grad_norm", None)
        self.__dict__.setdefault("_last_step_skipped", False)

    # ----------------------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as torch does), validating its hyperparameters first.

        A parameter listed twice, in this group or across groups, is an error: torch only
        warns for a duplicate inside one group, and the duplicate would be stepped twice. So is
        a ``nonfinite`` or ``max_grad_norm`` other than the other groups': they are settings of
        the whole optimizer.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        index = len(self.param_groups)
        where = f"param group {index}: "
        merged = {**self.defaults, **param_group}
        check_group(merged, type(self).__name__, where, self.algorithm.own)
        if self.param_groups:
            check_optimizer_wide([*self.param_groups, merged], start=index)

        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(f"{where}params must be an ordered collection (list), not a set")
        elif params is None:
            raise ValueError(f"{where}a param group needs a 'params' entry")
        params = list(params)
        param_group["params"] = params
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            t = p[1] if isinstance(p, tuple) and len(p) == 2 else p
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"{where}can only optimize Tensors, but params[{i}] is {type(t).__name__}"
                )
            if id(t) in seen:
                raise ValueError(
                    f"{where}parameter given twice: params[{i}] is the same tensor as "
                    f"params[{seen[id(t)]}] (a parameter group with duplicate parameters; "
                    "torch warns and steps it once, adamkit refuses)"
                )
            seen[id(t)] = i
        for g, group in enumerate(self.param_groups):
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(
                        f"{where}parameter given twice: params[{seen[id(p)]}] is already in "
                        f"param group {g} (some parameters appear in more than one parameter "
                        "group)"
                    )
        super().add_param_group(param_group)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state dict, plus ``"adamkit": {"format", "version"}``.

        torch.optim ignores the extra entry, so the checkpoint still loads there, unless it
        holds 8-bit state (format 3): its codes are saved under ``<moment>_codes``, so torch,
        which would read codes as moments, fails at its next step (KeyError ``'exp_avg'``) rather
        than training on them; pass it through :func:`adamkit.full_precision_state` first.
        """
        from .. import __version__

        state = super().state_dict()
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

    def load_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Any], strict: bool = True
    ) -> LoadReport:
        """Load optimizer state (torch's schema; torch.optim checkpoints load unchanged).

        When the checkpoint and this optimizer both carry parameter names (built from
        ``named_parameters()``), state is matched by name: with ``strict`` (default) a missing,
        unexpected or misfitting name is an error that lists them; with ``strict=False`` what
        matches is loaded and the rest is returned in the :class:`LoadReport`. Without names,
        state is matched by position as in torch, after checking group sizes, state shapes and
        keys. A checkpoint in a newer adamkit state format is refused.

        Hyperparameters come from the checkpoint, as in torch. The execution settings
        (``foreach``, ``fused``, ``capturable``, ``differentiable``) describe how to run on
        this machine, not the math, so the live optimizer keeps its own; so do ``state_precision``
        and ``stochastic_rounding``, and the loaded moments are converted to this optimizer's
        storage (an fp32 checkpoint, torch.optim's included, loads into an 8-bit optimizer and
        the reverse; a checkpoint of the same precision is restored bit for bit). Keys a checkpoint
        lacks (an older torch's) take this optimizer's defaults; the optimizer-wide ``nonfinite``
        and ``max_grad_norm`` are the checkpoint's (every saved group must agree) and replace the
        defaults. A ``step`` that is negative or not finite (or a non-finite ``mu_product``) is
        refused. If loading fails for any reason, the optimizer is left exactly as it was.
        Entries of ``state`` that are no parameter's are kept, as torch keeps them. Hooks of
        ``register_load_state_dict_post_hook`` run once the load is complete (settings
        restored, state converted), in order, once each.
        """
        from .. import __version__

        check_format(state_dict, __version__)

        def needed(saved_group: Mapping[str, Any]) -> tuple[str, ...]:
            group = {**self.defaults, **saved_group}
            if "amsgrad" in group:  # it decides which state to expect: it must be a flag
                saved = state_dict.get("param_groups", [])
                index = next((i for i, g in enumerate(saved) if g is saved_group), "?")
                check_flag("amsgrad", group["amsgrad"], f"loaded param group {index}: ")
            return ("step", *self._moment_keys(group), *self._scalar_keys)

        positional, report = prepare(state_dict, self.param_groups, needed, strict)
        before = (self.state, self.param_groups)
        self.__dict__.pop("_fused_plans", None)  # the state tensors are about to be replaced
        execution = [{k: g[k] for k in _EXECUTION_KEYS if k in g} for g in self.param_groups]
        # torch's load ends by calling the post-hooks, before the settings below are restored
        # and the state converted: they would see a half-loaded optimizer (the checkpoint's
        # `foreach`). Held back here, they run at the end.
        post_hooks = self._optimizer_load_state_dict_post_hooks
        try:
            self._optimizer_load_state_dict_post_hooks = OrderedDict()
            try:
                super().load_state_dict(positional)
            finally:
                self._optimizer_load_state_dict_post_hooks = post_hooks
            for index, (group, ex) in enumerate(zip(self.param_groups, execution, strict=True)):
                for key, value in self.defaults.items():
                    group.setdefault(key, value)
                group.update(ex)
                group.update(self.algorithm.pinned)
                where = f"loaded param group {index}: "
                check_group(group, type(self).__name__, where, self.algorithm.own)
            check_optimizer_wide(self.param_groups, "load_state_dict: in the checkpoint, ")
            # Scalars as this version keeps them: 0-d CPU tensors (an older torch saved `step`
            # as a number; a fused GPU run keeps it on the GPU). Entries that are no parameter's
            # stay as they were saved, as torch keeps them.
            for p in (p for group in self.param_groups for p in group["params"]):
                entry = self.state.get(p, {})
                for key in ("step", *self._scalar_keys):
                    if key in entry:
                        entry[key] = scalar_state(entry[key], step_dtype())
            self._convert_loaded(positional)
        except Exception:
            self.state, self.param_groups = before
            raise
        for key in OPTIMIZER_WIDE:  # a group added later takes the loaded setting
            self.defaults[key] = self.param_groups[0][key]
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
        return report

    def _convert_loaded(self, positional: Mapping[str, Any]) -> None:
        """Store each loaded moment in this optimizer's format, from the checkpoint's own
        tensors (torch's loader has cast floating-point state to the parameter's dtype)."""
        saved_state = positional["state"]
        for group, saved_group in zip(self.param_groups, positional["param_groups"], strict=True):
            keys = self._moment_keys(group)
            for p, saved_id in zip(group["params"], saved_group["params"], strict=True):
                saved = saved_state.get(saved_id)
                if not saved:
                    continue
                entry = self.state[p]
                fmt = state_format(p, group["state_precision"])
                for key in keys:
                    entry.pop(scale_key(key), None)
                    source = saved
                    if is_sharded(p) and not is_sharded(saved[key]):
                        # A full (unsharded) checkpoint: take this process's part of it.
                        source = {key: shard_like(p, decode(saved, key).to(local(p).device))}
                    for name, value in convert(source, key, fmt, p).items():
                        if is_sharded(p) and not is_sharded(value) and name == key:
                            value = sharded_like(p, value)  # codes are sharded as p is
                        entry[name] = value.to(p.device)

    def _moment_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the state tensors shaped like the parameter, in the rule's order."""
        return self.algorithm.state_keys(group.get("amsgrad", False))

    @property
    def _scalar_keys(self) -> tuple[str, ...]:
        """Names of the 0-d state tensors besides ``step``."""
        return tuple(self.algorithm.scalars)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = {"step": torch.tensor(0.0, dtype=step_dtype())}
        for key, value in self.algorithm.scalars.items():
            state[key] = torch.tensor(value, dtype=step_dtype())
        fmt = state_format(p, group["state_precision"])
        for key in self._moment_keys(group):
            state.update(zero_state(p, fmt, key))
        return state

    def _hyper(self, group: dict[str, Any]) -> Hyper:
        beta1, beta2 = group["betas"]
        # differentiable=True keeps tensor hyperparameters as tensors: the step's graph then
        # reaches them (hypergradients of lr, betas, weight_decay), as in torch.
        value = _graph_value if group.get("differentiable") else scalar_value
        h = Hyper(
            lr=value(group["lr"]),
            beta1=value(beta1),
            beta2=value(beta2),
            eps=float(group["eps"]),
            weight_decay=value(group["weight_decay"]),
            maximize=group.get("maximize", False),
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            amsgrad=group.get("amsgrad", False),
            own={name: float(group[name]) for name in self.algorithm.own},
        )
        # A group changed by hand after construction (group["betas"] = (1.0, 0.999)) is
        # checked here, cheaply; check_group then says what is wrong, as at construction.
        if not (
            0 <= h.beta1 < 1
            and 0 <= h.beta2 < 1
            and 0 <= h.lr < math.inf
            and 0 <= h.eps < math.inf
            and 0 <= h.weight_decay < math.inf
            and all(0 <= v < math.inf for v in h.own.values())
        ):
            index = next(i for i, g in enumerate(self.param_groups) if g is group)
            check_group(group, type(self).__name__, f"param group {index}: ", self.algorithm.own)
        return h

    def execution_path(self, group: dict[str, Any] | None = None) -> str:
        """The execution path ``step()`` uses for ``group`` (default: the first group).

        ``"fused"`` with ``fused=True``, or by default (``fused=None, foreach=None``) where the
        algorithm has a kernel and it could be built; ``"forloop"`` with ``foreach=False``;
        ``"foreach"`` otherwise.
        On the fused path, CPU buckets take the C kernel and CUDA buckets the GPU kernels
        (``optim/_device.py``); buckets no kernel can take (plain bf16 or fp16 parameters on the
        CPU, fp16 parameters with low-precision state, a GPU without Triton for RAdam, NAdam,
        Adamax or low-precision state, non-contiguous tensors) run on ``"foreach"``, unless
        ``fused=True`` was asked for explicitly, which then raises and says why.
        """
        group = self.param_groups[0] if group is None else group
        if group.get("differentiable"):
            return "differentiable"
        fused, foreach = group.get("fused"), group.get("foreach")
        if fused:
            return "fused"
        if fused is None and foreach is None and self.algorithm.kernel and kernel_available():
            return "fused"
        return "forloop" if foreach is False else "foreach"

    # ------------------------------------------------------------------------------- step
    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._last_step_skipped = self._guard_gradients()
        if self._last_step_skipped:
            self.skipped_steps += 1
            return loss
        # As torch: autograd records the step exactly when the optimizer is differentiable.
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _nonfinite_message(
        self, owners: list[tuple[int, int, Tensor]], norms: list[Tensor] | tuple[Tensor, ...]
    ) -> str:
        """Why the global gradient norm is not finite: which gradients hold a NaN or an inf,
        or, when every element is finite, which norms overflowed (the rare branch: the
        elements are only looked at here)."""
        name = f"adamkit.{type(self).__name__}"
        nonfinite: list[str] = []
        overflowed: list[str] = []
        for (g, i, p), norm in zip(owners, norms, strict=True):
            if not torch.isfinite(norm):
                finite = bool(torch.isfinite(p.grad).all())  # type: ignore[arg-type]
                (overflowed if finite else nonfinite).append(_param_label(self.param_groups[g], i))
        if nonfinite:
            also = (
                f"; the norm of {', '.join(overflowed)} overflowed to inf, its elements finite"
                if overflowed
                else ""
            )
            return (
                f"{name}: non-finite gradient in {', '.join(nonfinite)}{also} "
                "(nonfinite='raise'; 'skip' skips such steps instead)"
            )
        dtype = norms[0].dtype
        where = (
            f"the norm of {', '.join(overflowed)} is inf"
            if overflowed
            else "each parameter's norm is finite but their total is inf"
        )
        return (
            f"{name}: the gradient norm overflowed: {where} in {dtype}, though every gradient "
            f"element is finite (a sum of squares passes {dtype}'s range once an element "
            f"reaches about {math.sqrt(torch.finfo(dtype).max):.3g}). The gradients are too "
            "large to step with, not NaN or inf: scale the loss down, or nonfinite='skip' "
            "skips such steps"
        )

    def _guard_gradients(self) -> bool:
        """Apply ``nonfinite`` and ``max_grad_norm``; return True if this step must be skipped.

        One ``torch._foreach_norm`` over every gradient gives both the check and the global
        norm. Clipping is ``torch.nn.utils.clip_grad_norm_``'s, operation for operation, and
        scales the ``.grad`` tensors in place as that function does, a non-finite norm included
        (with ``nonfinite=None``): a NaN norm makes every gradient NaN, an infinite one scales
        them by 0. The settings are the optimizer's, held by every group (they must agree).
        """
        check_optimizer_wide(self.param_groups, f"adamkit.{type(self).__name__}.step(): ")
        policy = self.param_groups[0].get("nonfinite")
        max_norm = self.param_groups[0].get("max_grad_norm")
        if policy is None and max_norm is None:
            return False
        owners = [
            (g, i, p)
            for g, group in enumerate(self.param_groups)
            for i, p in enumerate(group["params"])
            if p.grad is not None and not p.grad.is_sparse
        ]
        if not owners:
            return False
        grads = [p.grad for _, _, p in owners]
        norms = torch._foreach_norm(grads)
        device = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
        self.last_grad_norm = float(total)
        if not math.isfinite(self.last_grad_norm):
            if policy == "raise":
                raise FloatingPointError(self._nonfinite_message(owners, norms))
            if policy == "skip":
                return True  # an overflowed norm of finite gradients too: no step could use it
        if max_norm is not None:
            # nonfinite=None clips a non-finite norm too, as clip_grad_norm_ does.
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].device))
        return False

    def _step_group(self, group: dict[str, Any]) -> None:
        moment_keys = self._moment_keys(group)
        # map() over C getters: a step of 2000 tensors asks each question 2000 times.
        params: list[Tensor] = group["params"]
        grads: list[Tensor] = list(map(_GRAD, params))
        if _NONE in map(id, grads):
            kept = [i for i, g in enumerate(grads) if g is not None]
            params, grads = [params[i] for i in kept], [grads[i] for i in kept]
        if not params:
            return
        if any(map(_IS_SPARSE, grads)):
            every = enumerate(group["params"])
            i = next(i for i, p in every if p.grad is not None and p.grad.is_sparse)
            raise RuntimeError(
                f"adamkit.{type(self).__name__} does not support sparse gradients "
                f"({_param_label(group, i)} has one); use torch.optim.SparseAdam, or "
                "nn.Embedding(sparse=False)"
            )
        states = self._entries(params)
        if not all(states):  # an empty dict: state not created yet
            for p, state in zip(params, states, strict=True):
                if len(state) == 0:
                    state.update(self._init_state(p, group))

        hyper = self._hyper(group)
        path_name = self.execution_path(group)
        if path_name == "fused":
            self._step_fused(group, params, grads, states, hyper, moment_keys)
            return
        path = DIFFERENTIABLE if path_name == "differentiable" else PATHS[path_name]
        if path.name != "foreach":
            # One parameter at a time: temporaries never exceed one parameter's size.
            for p in params:
                self._apply_rule(path, [p], group, hyper, moment_keys)
        else:
            for indices in _by_device_and_dtype(params).values():
                self._apply_rule(path, [params[i] for i in indices], group, hyper, moment_keys)

    def _apply_rule(
        self,
        path: TensorOps,
        params: list[Tensor],
        group: dict[str, Any],
        hyper: Hyper,
        moment_keys: tuple[str, ...],
    ) -> None:
        """Run the rule on one bucket, through fp32 copies where the state (or the parameters'
        rounding) is not the plain full-precision kind."""
        states = [self.state[p] for p in params]
        counters = ("step", *self._scalar_keys)
        label = lambda i: _label_of(group, params[i])  # noqa: E731
        prepare_counters(type(self).__name__, states, counters, step_dtype(), label)
        formats = self._formats(params, group)
        stochastic = group["stochastic_rounding"]
        if not needs_widening(params, formats, stochastic):
            type(self)._rule(path, self._bucket(params, moment_keys), hyper)
            return
        widened_step(
            type(self)._rule,
            path,
            params,
            [self.state[p] for p in params],
            formats,
            self._salts(params),
            moment_keys,
            self._scalar_keys,
            hyper,
            stochastic,
        )

    def _formats(self, params: list[Tensor], group: dict[str, Any]) -> list[int]:
        """How each parameter's state is stored (see ``_precision.stored_format``)."""
        precision = group["state_precision"]
        return [stored_format(p, self.state[p], precision) for p in params]

    def _salts(self, params: list[Tensor]) -> list[int]:
        """Each parameter's position in the optimizer: it salts stochastic rounding."""
        table: dict[int, int] | None = self.__dict__.get("_salt_table")
        if table is None or any(id(p) not in table for p in params):
            every = (p for group in self.param_groups for p in group["params"])
            table = self._salt_table = {id(p): i for i, p in enumerate(every)}
        return [table[id(p)] for p in params]

    def _entries(self, params: list[Tensor]) -> list[dict[str, Any]]:
        """``[self.state[p] for p in params]``, kept while no entry of ``self.state`` was
        reassigned (``LiveState.mutations``): a lookup by tensor calls ``Tensor.__hash__``, a
        Python function, which for 2000 parameters costs a tenth of the kernel's time."""
        state = self.state
        ids = tuple(map(id, params))
        kept = self.__dict__.get("_kept_entries")
        mutations = getattr(state, "mutations", None)
        if (
            kept is not None
            and mutations is not None
            and kept[0] is state
            and kept[1] == mutations
            and kept[2] == ids
        ):
            return list(kept[3])
        entries: list[dict[str, Any]] = list(map(state.__getitem__, params))
        self._kept_entries = (state, getattr(state, "mutations", None), ids, entries)
        return entries

    def _step_fused(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        hyper: Hyper,
        moment_keys: tuple[str, ...],
    ) -> None:
        """Step ``params`` (with ``grads`` and their ``states``) with the fused kernel, one call
        per (device, dtype) bucket; a bucket it cannot take runs on the foreach path (one
        parameter at a time where tensors overlap), or raises, when ``fused=True`` was asked.

        A bucket's plan is kept between steps, but each step reads the tensors now in the
        parameters, gradients and state through it, checked (``_fused.Layout.read``); a bucket
        whose tensors no longer fit its plan is planned again.
        """
        plans = self.__dict__.setdefault("_fused_plans", {})
        # A plan fixes the storage and the rounding, so a change of either builds a new one.
        ids = tuple(map(id, params))
        key = (ids, group["state_precision"], group["stochastic_rounding"], hyper.amsgrad)
        cached = plans.get(id(group))
        buckets = self._read_buckets(
            group, params, grads, states, hyper, cached[1] if cached and cached[0] == key else None
        )
        if buckets is None:
            # A bucket's tensors no longer fit its plan (p.data = ..., a dtype moved, state
            # replaced): bucket and plan the group afresh. Nothing was stepped yet.
            buckets = self._read_buckets(group, params, grads, states, hyper, None)
        if buckets is None:
            # Plans just built from these very tensors cannot read them: a case the checks
            # above do not name. torch's own operations can still step it, safely.
            warnings.warn(
                f"adamkit.{type(self).__name__}: the fused kernel cannot read this group's "
                "tensors as planned; stepping it on the foreach path (please report this)",
                RuntimeWarning,
                stacklevel=3,
            )
            plans.pop(id(group), None)
            for indices in _by_device_and_dtype(params).values():
                bucket_params = [params[i] for i in indices]
                self._apply_rule(PATHS["foreach"], bucket_params, group, hyper, moment_keys)
            return
        plans[id(group)] = (key, [b[:3] for b in buckets])
        for _, plan, reason, bucket_params, reading in buckets:
            if isinstance(reading, Reading):
                assert plan is not None
                plan.run(reading, hyper)
                # torch's in-place updates bump the version counters autograd checks (a graph
                # that saved a parameter must not be backpropagated through after a step).
                bump_versions(reading.tensors["params"])
                continue
            reason = reading if isinstance(reading, str) else reason
            if group.get("fused"):
                raise RuntimeError(
                    f"adamkit.{type(self).__name__}(fused=True): {reason}; leave "
                    "fused=None to fall back to the multi-tensor path"
                )
            if reason is not None and reason.startswith(OVERLAPPING):
                for p in bucket_params:  # in order, as torch's for-loop: deterministic
                    self._apply_rule(PATHS["forloop"], [p], group, hyper, moment_keys)
            else:
                self._apply_rule(PATHS["foreach"], bucket_params, group, hyper, moment_keys)

    def _read_buckets(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        hyper: Hyper,
        entries: list[tuple[list[int] | None, Any, str | None]] | None,
    ) -> list[tuple[Any, ...]] | None:
        """Each bucket's (positions, plan, reason, parameters, reading or reason), planning
        those without a plan; ``None`` when a planned bucket no longer fits its plan."""
        if entries is None:
            by_bucket = _by_device_and_dtype(params).values()
            entries = [(None if len(by_bucket) == 1 else i, None, None) for i in by_bucket]
        moment_keys = self._moment_keys(group)
        out = []
        for indices, plan, reason in entries:
            if indices is None:
                bucket_params, bucket_grads, bucket_states = params, grads, states
            else:
                bucket_params = [params[i] for i in indices]
                bucket_grads = [grads[i] for i in indices]
                bucket_states = [states[i] for i in indices]
            if plan is None and reason is None:
                plan, reason = self._plan(group, bucket_params, hyper, moment_keys)
            reading = plan.read(bucket_params, bucket_grads, bucket_states) if plan else None
            if plan is not None and reading is None:
                return None
            out.append((indices, plan, reason, bucket_params, reading))
        return out

    def _plan(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        hyper: Hyper,
        moment_keys: tuple[str, ...],
    ) -> tuple[FusedPlan | TorchFusedPlan | TritonPlan | None, str | None]:
        """The kernel's plan for one bucket, or why no kernel can step it. State that no
        longer fits its parameter is an error; counters of another dtype are converted."""
        name = type(self).__name__
        states = [self.state[p] for p in params]
        check_state_sizes(name, params, states, moment_keys, lambda p: _label_of(group, p))
        counters = ("step", *self._scalar_keys)
        label = lambda i: _label_of(group, params[i])  # noqa: E731
        prepare_counters(name, states, counters, step_dtype(), label)
        bucket = self._bucket(params, moment_keys)
        formats = self._formats(params, group)
        check_scales(name, params, states, moment_keys, formats, lambda p: _label_of(group, p))
        stochastic = group["stochastic_rounding"]
        on_gpu = gpu_path(params[0].device)
        storage = None
        if needs_widening(params, formats, stochastic) or (
            # On the CPU, plain half parameters take the kernel's fp32 loop only when asked
            # (fused=True, as torch's fused kernels: fp32 math, rounded to nearest); by
            # default they take the foreach path, as torch's default does.
            not on_gpu and group.get("fused") and params[0].dtype in (torch.bfloat16, torch.float16)
        ):
            storage = Storage(formats, states, self._salts(params), stochastic)
        formats_kept = storage.formats if storage is not None else None
        layout = Layout(bucket, params, moment_keys, self._scalar_keys, formats_kept)
        kernel = self.algorithm.kernel
        if kernel is None:
            return None, f"no fused kernel steps {self.algorithm.name}"
        if on_gpu:
            second = self.algorithm.states[1]
            return gpu_plan(kernel, bucket, layout, second, hyper.amsgrad, storage)
        reason = fused_unsupported(bucket, storage.formats if storage else None)
        if reason is not None:
            return None, reason
        plan = FusedPlan(kernel, bucket, layout, hyper.amsgrad, storage)
        return plan, None

    def _bucket(self, params: list[Tensor], moment_keys: tuple[str, ...]) -> Bucket:
        states = [self.state[p] for p in params]
        bucket = Bucket(
            params=[real_view(p) for p in params],
            grads=[real_view(p.grad) for p in params if p.grad is not None],
            steps=[s["step"] for s in states],
        )
        for key in moment_keys:
            bucket.state[key] = [real_view(s[key]) for s in states]
        for key in self._scalar_keys:
            bucket.state[key] = [s[key] for s in states]
        return bucket


def _graph_value(value: float | Tensor) -> float:
    """A hyperparameter for the differentiable step: a tensor that requires grad is kept (as
    a float-like tensor), anything else becomes a Python float."""
    if isinstance(value, Tensor) and value.requires_grad:
        return value.reshape(())  # type: ignore[return-value]  # lr of shape (1,): a scalar
    return scalar_value(value)


_GRAD = operator.attrgetter("grad")
_IS_SPARSE = operator.attrgetter("is_sparse")
_NONE = id(None)


def _by_device_and_dtype(params: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """The positions in ``params`` of each (device, dtype) bucket, in order."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return buckets
