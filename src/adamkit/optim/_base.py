"""The one optimizer base every adamkit optimizer derives from.

It is thin on purpose: it validates arguments, creates state lazily (with torch's state names,
so checkpoints move between torch.optim and adamkit), groups a parameter group's tensors into
buckets by device and dtype, and hands each bucket to the algorithm's update rule on the chosen
execution path. The math lives in the rules (``adam.py``, ``radam.py``, ...), what each
algorithm keeps in its row of ``_algorithms.py``; saving and loading state in ``_checkpoint.py``,
the ``nonfinite`` and ``max_grad_norm`` guards in ``_clipping.py``, and the choice of a fused
kernel for each bucket (and its plans, kept between steps) in ``_router.py``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._algorithms import Algorithm
from ._checkpoint import (
    LiveState,
    LoadReport,
    live_state,
    load_into,
    saved_state_dict,
)
from ._clipping import guard_gradients
from ._core import (
    Bucket,
    Hyper,
    Rule,
    by_device_and_dtype,
    label_of,
    param_label,
    real_view,
    step_dtype,
)
from ._device import gpu_path
from ._fused import (
    kernel_available,
    prepare_counters,
)
from ._modifiers import UpdateStats, modified, options_of
from ._paths import DIFFERENTIABLE, PATHS, TensorOps
from ._precision import (
    BF16_SR,
    NATIVE,
    is_sharded,
    needs_widening,
    state_format,
    stored_format,
    widened_step,
)
from ._precision import zeros as zero_state
from ._router import step_fused
from ._scalars import StepScalars
from ._validation import (
    check_group,
    check_optimizer_wide,
    scalar_value,
)

__all__ = ["AdamFamily", "ParamsT", "group_defaults"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def group_defaults(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer constructor's arguments (its ``locals()``) as a param group's defaults:
    every argument but ``self`` and ``params``, with ``betas`` given as a list made a tuple."""
    defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}
    if isinstance(defaults.get("betas"), list):
        defaults["betas"] = tuple(defaults["betas"])
    return defaults


def _has_cpu_params(group: Mapping[str, Any]) -> bool:
    """Whether a group has parameters the C kernel (not a GPU kernel) would step."""
    return any(not gpu_path(p.device) for p in group["params"])


class AdamFamily(Optimizer):
    """Base class: validation, lazy state, device/dtype buckets, dispatch to a rule.

    Subclasses set :attr:`algorithm` (their row of the table, which says what state they keep
    and which kernel steps them), :attr:`_rule` (the pure update function) and, where the row
    names a kernel, :attr:`_scalars` (the kernel's step scalars, ``optim/_scalars.py``), and
    take torch's signature, passing ``group_defaults(locals())`` here.
    """

    algorithm: ClassVar[Algorithm]
    _rule: ClassVar[Rule]
    _scalars: ClassVar[StepScalars | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        row = getattr(cls, "algorithm", None)
        if row is not None and row.kernel is not None and cls._scalars is None:
            raise TypeError(
                f"{cls.__name__}: its row names the kernels {row.kinds} but the class sets no "
                "_scalars (the step-scalar function the kernels need)"
            )

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        check_group(defaults, type(self).__name__, "", self.algorithm)
        super().__init__(params, defaults)
        if not kernel_available() and any(
            g.get("fused") and _has_cpu_params(g) for g in self.param_groups
        ):
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
        check_group(merged, type(self).__name__, where, self.algorithm)
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
        return saved_state_dict(super().state_dict())

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
        return load_into(self, state_dict, strict, super().load_state_dict)

    def _pinned(self) -> dict[str, Any]:
        """Group values a loaded checkpoint may not change (the row's, and the class's)."""
        return dict(self.algorithm.pinned)

    def _moment_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the state tensors a group's parameters may keep, in the rule's order
        (shaped like the parameter, but for a row with a layout: :meth:`_state_shapes`)."""
        return self.algorithm.state_keys(group.get("amsgrad", False))

    @property
    def _scalar_keys(self) -> tuple[str, ...]:
        """Names of the 0-d state tensors besides ``step``."""
        return tuple(self.algorithm.scalars)

    def _state_shapes(self, p: Tensor, group: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The state tensors ``p`` keeps, with their shapes (the row's ``shapes``; kept by
        shape: a step of thousands of tensors asks it of each, twice). Not to be changed."""
        key = (tuple(p.shape), bool(group.get("amsgrad", False)))
        known: dict[Any, dict[str, tuple[int, ...]]]
        known = self.__dict__.setdefault("_known_shapes", {})
        shapes = known.get(key)
        if shapes is None:
            shapes = known[key] = self.algorithm.shapes(*key)
        return shapes

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = {"step": torch.tensor(0.0, dtype=step_dtype())}
        for key, value in self.algorithm.scalars.items():
            state[key] = torch.tensor(value, dtype=step_dtype())
        fmt = state_format(p, group["state_precision"])
        for key, shape in self._state_shapes(p, group).items():
            if key in self.algorithm.reduced:  # Adafactor's row and column statistics
                state[key] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            elif key in self.algorithm.copies:  # schedule-free's z starts at the parameter
                # (differentiable: in the graph, as the parameter it copies), and is kept as
                # the weights are, whatever state_precision
                source = p if group.get("differentiable") else p.detach()
                state[key] = source.clone(memory_format=torch.preserve_format)
            else:
                assert shape == p.shape, (key, shape)  # a moment: shaped like the parameter
                state.update(zero_state(p, fmt, key))
        return state

    def _hyper(self, group: dict[str, Any]) -> Hyper:
        try:
            return self._checked_hyper(group)
        except (TypeError, ValueError):
            # A value of the wrong kind set by hand (group["eps"] = 1e-3 where a pair is
            # taken): check_group names it; anything it lets pass is raised as it was.
            self._refuse(group)
            raise

    def _refuse(self, group: dict[str, Any]) -> None:
        """Raise check_group's error for a group changed by hand, naming the group."""
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        check_group(group, type(self).__name__, f"param group {index}: ", self.algorithm)

    def _checked_hyper(self, group: dict[str, Any]) -> Hyper:
        row = self.algorithm
        beta1, beta2 = group["betas"] if row.betas else (0.0, 0.0)
        eps1, eps = group["eps"] if row.eps_pair else (None, group["eps"])
        # differentiable=True keeps tensor hyperparameters as tensors: the step's graph then
        # reaches them (hypergradients of lr, betas, weight_decay), as in torch.
        value = _graph_value if group.get("differentiable") else scalar_value
        h = Hyper(
            lr=value(group["lr"]),
            beta1=value(beta1),
            beta2=value(beta2),
            eps=float(eps),
            eps1=None if eps1 is None else float(eps1),
            weight_decay=value(group["weight_decay"]),
            maximize=group.get("maximize", False),
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            # Only an algorithm with a running maximum has AMSGrad: a stray flag in another's
            # group (add_param_group keeps any key) must not reach its kernels.
            amsgrad=bool(group.get("amsgrad", False)) and self.algorithm.amsgrad_state is not None,
            decay_in_rule=self.algorithm.decay_in_rule,
            cautious=bool(group.get("cautious", False)),
            update_clipping=bool(group.get("update_clipping", False)),
            own={name: float(group[name]) for name in row.own},
        )
        # A group changed by hand after construction (group["betas"] = (1.0, 0.999)) is
        # checked here, cheaply; check_group then says what is wrong, as at construction.
        if not (
            0 <= h.beta1 < 1
            and 0 <= h.beta2 < 1
            and 0 <= h.lr < math.inf
            and 0 <= h.eps < math.inf
            and 0 <= h.weight_decay < math.inf
            and (h.eps1 is None or 0 <= h.eps1 < math.inf)
            and all(map(row.in_bounds, h.own.items()))
            and all(h.own[name] < 1 for name in row.fractions)
            and all(h.own[name].is_integer() for name in row.integers)
            and not (group.get("fused") and not row.fused)
        ):
            self._refuse(group)
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
        ``fused=True`` was asked for explicitly, which then raises and says why. A kernel of
        whole tensors (the row's ``tensor_kernel``: Adafactor's, of CPU matrices in any
        floating dtype) is the default only for a group with CPU parameters.
        """
        group = self.param_groups[0] if group is None else group
        if group.get("differentiable"):
            return "differentiable"
        fused, foreach = group.get("fused"), group.get("foreach")
        if fused:
            return "fused"
        # By default, the fused path where a kernel steps the algorithm (the GPU kernels need
        # no CPU library: only CPU parameters need it built).
        default = fused is None and foreach is None and self.algorithm.fused
        if default and self.algorithm.tensor_kernel:  # (a CPU kernel, of CPU tensors only)
            default = any(p.is_cpu for p in group["params"])
        if default and (kernel_available() or not _has_cpu_params(group)):
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
        self.__dict__["_update_stats"] = {}  # what the options do at this step (none yet)
        for index, group in enumerate(self.param_groups):
            # Values and tensors changed by hand since: refused before any group steps. (The
            # base's _hyper, only to validate: a subclass's derives values from its schedule.)
            AdamFamily._hyper(self, group)
            if self.algorithm.layout is not None or not self.algorithm.complex:
                self._check_tensors(group, index)
            if any(options_of(group)):  # set by hand since: refused before anything changes
                where = f"param group {index}: "
                check_group(group, type(self).__name__, where, self.algorithm)
            if not self.algorithm.elementwise and any(map(is_sharded, group["params"])):
                raise NotImplementedError(
                    f"adamkit.{type(self).__name__} on sharded parameters (FSDP2, tensor "
                    f"parallel; param group {index}) is not supported: its step needs whole "
                    "tensors (row and column statistics, the update's RMS), and each process "
                    "holds a shard"
                )
            if any(options_of(group)) and any(map(is_sharded, group["params"])):
                flag = "cautious" if group.get("cautious") else "update_clipping"
                raise NotImplementedError(
                    f"adamkit.{type(self).__name__}: {flag}=True on sharded parameters (FSDP2, "
                    f"tensor parallel; param group {index}) is not supported yet: it needs the "
                    "whole tensor's update, and each process holds a shard"
                )
        with torch.no_grad():
            name = f"adamkit.{type(self).__name__}"
            self._last_step_skipped, norm = guard_gradients(name, self.param_groups)
        if norm is not None:
            self.last_grad_norm = norm
        if self._last_step_skipped:
            self.skipped_steps += 1
            return loss
        # As torch: autograd records the step exactly when the optimizer is differentiable.
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            for group in self.param_groups:
                self._step_group(group)
        return loss

    @property
    def update_stats(self) -> list[dict[str, float | None]]:
        """Per param group, what ``cautious`` and ``update_clipping`` did at the last step:
        ``kept_fraction`` (of the update's elements) and ``clip_factor`` (the mean factor the
        lr was scaled by); ``None`` where the option is off."""
        stats = self.__dict__.get("_update_stats", {})
        return [
            stats[id(g)].as_dict()
            if id(g) in stats
            else {"kept_fraction": None, "clip_factor": None}
            for g in self.param_groups
        ]

    def _step_group(self, group: dict[str, Any]) -> None:
        if any(options_of(group)):
            self.__dict__.setdefault("_update_stats", {})[id(group)] = UpdateStats()
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
                f"({param_label(group, i)} has one); use torch.optim.SparseAdam, or "
                "nn.Embedding(sparse=False)"
            )
        states = self._entries(params)
        if not all(states):  # an empty dict: state not created yet
            for p, state in zip(params, states, strict=True):
                if len(state) == 0:
                    state.update(self._init_state(p, group))

        hyper = self._hyper(group)
        path_name = self.execution_path(group)
        if path_name == "fused" and self.algorithm.tensor_kernel:
            # Its kernel steps whole tensors, called by the rule, which runs on the
            # multi-tensor ops for what the kernel does not take (vectors, other devices).
            hyper = dataclasses.replace(hyper, tensor_kernel=True)
            path_name = "foreach"
        elif path_name == "fused":
            step_fused(self, group, params, grads, states, hyper, moment_keys)
            return
        path = DIFFERENTIABLE if path_name == "differentiable" else PATHS[path_name]
        if path.name != "foreach":
            # One parameter at a time: temporaries never exceed one parameter's size.
            buckets = [[p] for p in params]
        else:
            buckets = [[params[i] for i in b] for b in by_device_and_dtype(params).values()]
        if self.algorithm.layout is not None:  # the tensors of a bucket keep the same states
            buckets = [b for bucket in buckets for b in self._by_layout(bucket, group).values()]
        for bucket in buckets:
            if self.algorithm.layout is not None:
                moment_keys = tuple(self._state_shapes(bucket[0], group))
            self._apply_rule(path, bucket, group, hyper, moment_keys)

    def _check_tensors(self, group: dict[str, Any], index: int) -> None:
        """Before any group steps: no complex parameter where the row takes none, each
        stepped parameter's state is what its shape keeps (the row's layout; a parameter
        resized after its state was made would otherwise broadcast against its old
        statistics, or fail half-way through the step), and on the fused path of a kernel of
        whole tensors that no tensor's storage was freed under it, and, with ``fused=True``,
        that the kernel takes each one."""
        row = self.algorithm
        name = f"adamkit.{type(self).__name__}"
        kernel = row.tensor_kernel and self.execution_path(group) == "fused"
        strict = bool(group.get("fused"))
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.is_complex() and not row.complex:
                where = f"{param_label(group, i)} of param group {index}"
                raise RuntimeError(
                    f"{row.name} does not support complex parameters ({where} is {p.dtype})"
                )
            state = self.state.get(p)
            if row.layout is not None and state:
                shapes = self._state_shapes(p, group)
                kept = {k: tuple(v.shape) for k, v in state.items() if k in row.states}
                if kept != shapes:
                    raise RuntimeError(
                        f"{name}: {param_label(group, i)} has {p.numel()} elements of shape "
                        f"{tuple(p.shape)} (param group {index}), which keep {shapes}, but its "
                        f"state holds {kept}: was the parameter replaced or resized after its "
                        "state was created? Delete its state (optimizer.state.pop(p)) to start "
                        "it afresh"
                    )
            if kernel:  # (raises for storage freed under a tensor, as the rule's check would)
                reason = self._kernel_refusal(p, state or {}, strict)
                if reason is not None:
                    raise RuntimeError(
                        f"{name}(fused=True): {param_label(group, i)} of param group {index}: "
                        f"{reason}; leave fused=None to fall back to the multi-tensor path"
                    )

    def _kernel_refusal(self, p: Tensor, state: dict[str, Any], strict: bool) -> str | None:
        """Why the kernel of whole tensors (the row's ``tensor_kernel``) cannot take ``p``, its
        gradient and ``state`` as they are (``None``: it can, or it does not step ``p``), with
        ``strict`` (``fused=True``, which refuses it before any group steps); without, only
        an error no path can step past (a storage freed under a tensor), each step, the rule
        asking the rest when it hands the tensors over. The row's class says."""
        return None

    def _by_layout(
        self, params: list[Tensor], group: dict[str, Any]
    ) -> dict[tuple[str, ...], list[Tensor]]:
        """``params`` split by the state tensors each keeps (Adafactor's matrices and vectors)."""
        split: dict[tuple[str, ...], list[Tensor]] = {}
        for p in params:
            split.setdefault(tuple(self._state_shapes(p, group)), []).append(p)
        return split

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
        label = lambda i: label_of(group, params[i])  # noqa: E731
        prepare_counters(type(self).__name__, states, counters, step_dtype(), label)
        formats = self._formats(params, group)
        stochastic = group["stochastic_rounding"]
        rule = type(self)._rule
        if self.algorithm.eps_pair and hyper.eps1 is None:
            # Adafactor's eps1=None: the machine epsilon of the parameters' own dtype, also
            # where bf16 parameters are stepped through fp32 copies.
            hyper = dataclasses.replace(hyper, eps1=torch.finfo(params[0].dtype).eps)
        if hyper.cautious or hyper.update_clipping:
            stats = self.__dict__.setdefault("_update_stats", {}).setdefault(
                id(group), UpdateStats()
            )
            rule = modified(rule, self.algorithm, stats)
        # Per state only where a row's states may differ in format (schedule-free, Adafactor):
        # a step of thousands of tensors asks this of every one.
        by_key = (
            self._key_formats(params, formats, group, moment_keys)
            if self.algorithm.mixed_formats
            else None
        )
        every = formats if by_key is None else [f for e in by_key for f in e.values()]
        if not needs_widening(params, every, stochastic):
            rule(path, self._bucket(params, moment_keys), hyper)
            return
        if by_key is None:
            by_key = [dict.fromkeys(moment_keys, f) for f in formats]
        widened_step(
            rule,
            path,
            params,
            [self.state[p] for p in params],
            by_key,
            self._salts(params),
            moment_keys,
            self._scalar_keys,
            hyper,
            stochastic,
        )

    def _formats(self, params: list[Tensor], group: dict[str, Any]) -> list[int]:
        """How each parameter's moments are stored (see ``_precision.stored_format``; the
        other states' formats follow from it: :meth:`_state_format`). For bf16 parameters with
        ``stochastic_rounding`` and a state that copies the weights (the row's ``copies``:
        schedule-free's ``z``), the moments round stochastically too, so that the tensor
        keeps one format, which the kernels can step."""
        precision = group["state_precision"]
        coded = self.algorithm.moments
        first = coded[0]
        formats = [
            stored_format(
                p,
                entry,
                precision,
                first if first in entry else next((k for k in coded if k in entry), first),
            )
            for p, entry in zip(params, map(self.state.__getitem__, params), strict=True)
        ]
        if self.algorithm.copies and group["stochastic_rounding"]:
            return [
                BF16_SR if f == NATIVE and p.dtype == torch.bfloat16 else f
                for p, f in zip(params, formats, strict=True)
            ]
        return formats

    def _copy_format(self, p: Tensor, group: dict[str, Any]) -> int:
        """How a state that copies the weights is stored: as the weights, whatever
        ``state_precision`` (stochastically rounded bf16 where they are)."""
        stochastic = group["stochastic_rounding"] and p.dtype == torch.bfloat16
        return BF16_SR if stochastic else NATIVE  # (_formats rounds the moments alike)

    def _state_format(self, p: Tensor, group: dict[str, Any], key: str, moments: int) -> int:
        """How ``p``'s state ``key`` is stored, given its moments' format: a state that copies
        the weights as the weights are (schedule-free's z), a reduction in full precision (the
        row's ``reduced``: Adafactor's row and column statistics, by key, whatever their
        shape), the others as ``moments``."""
        if key in self.algorithm.copies:
            return self._copy_format(p, group)
        if key in self.algorithm.reduced:
            return NATIVE
        return moments

    def _key_formats(
        self,
        params: list[Tensor],
        formats: list[int],
        group: dict[str, Any],
        keys: tuple[str, ...],
    ) -> list[dict[str, int]]:
        """Each parameter's format per state (see :meth:`_state_format`): schedule-free's z
        beside a bf16 or 8-bit ``exp_avg_sq``, Adafactor's full-precision statistics."""
        return [
            {k: self._state_format(p, group, k, f) for k in keys}
            for p, f in zip(params, formats, strict=True)
        ]

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
