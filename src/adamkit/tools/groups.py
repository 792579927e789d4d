"""``param_groups(model)``: weight decay only where it belongs, and layer-wise lr decay.

Decoupled weight decay is meant for weight matrices. Applied to biases, normalization scales
and embeddings it only pulls them toward zero (pytorch issue #1402, open since 2017; every large
training codebase carries its own fix, most by matching names like ``"bias"`` or ``"norm"``).
Here the decision is made from the module that owns each parameter: a parameter in a module's
bias slot (``bias``; ``in_proj_bias``, ``bias_k``, ``bias_v`` of attention), or owned by a
normalization layer or an embedding, gets no decay.
Name patterns override that where a model needs it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["NO_DECAY_MODULES", "param_groups"]

#: Module types whose parameters never get weight decay.
NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    _NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_bias(local_name: str) -> bool:
    """A module's own bias slot: ``bias``, and MultiheadAttention's ``in_proj_bias``,
    ``bias_k``, ``bias_v``."""
    return local_name == "bias" or local_name.endswith("_bias") or local_name.startswith("bias_")


def _no_decay_by_module(
    model: nn.Module, no_decay_modules: tuple[type[nn.Module], ...]
) -> set[int]:
    """ids of parameters that a bias slot, a norm layer or an embedding owns (tied weights: any
    owner suffices)."""
    exempt: set[int] = set()
    for module in model.modules():
        for local_name, p in module.named_parameters(recurse=False):
            if _is_bias(local_name) or isinstance(module, no_decay_modules):
                exempt.add(id(p))
    return exempt


def _depths(
    names: Sequence[str], model: nn.Module, blocks: str | None
) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise decay: 0 before the stack of blocks, i + 1 in
    block i, ``n + 1`` after it; and ``n``, the number of blocks."""
    stack: nn.Module
    if blocks is None:  # the largest nn.ModuleList is the stack of blocks
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        if not lists:
            raise ValueError(
                "param_groups: layer_decay needs a stack of blocks; the model has no nn.ModuleList "
                "(name it with blocks='prefix', e.g. blocks='encoder.layers')"
            )
        blocks, stack = max(lists, key=lambda item: len(item[1]))
    else:
        found = dict(model.named_modules()).get(blocks)
        if not isinstance(found, nn.ModuleList | nn.Sequential):
            raise ValueError(
                f"param_groups: blocks={blocks!r} is not an nn.ModuleList or nn.Sequential in the "
                "model"
            )
        stack = found
    count = len(stack)
    pattern = re.compile(re.escape(blocks) + r"\.(\d+)\.") if blocks else re.compile(r"^(\d+)\.")
    depths: dict[str, int] = {}
    seen_stack = False
    for name in names:
        match = pattern.match(name)
        if match:
            depths[name] = int(match.group(1)) + 1
            seen_stack = True
        else:
            depths[name] = count + 1 if seen_stack else 0
    return depths, count


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.1,
    *,
    lr: float | None = None,
    no_decay: Sequence[str] = (),
    decay: Sequence[str] = (),
    no_decay_modules: tuple[type[nn.Module], ...] = NO_DECAY_MODULES,
    layer_decay: float | None = None,
    blocks: str | None = None,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups for ``model``: ``"decay"`` (``weight_decay``) and ``"no_decay"`` (0).

    A parameter gets no weight decay when its module registers it as ``bias``, or when it is
    owned by a normalization layer or an embedding (``no_decay_modules``). Name patterns
    (``fnmatch``, on ``named_parameters()`` names) override the rule: ``no_decay=["pos_embed"]``
    exempts, ``decay=["head.*"]`` decays. Every group keeps the parameters' names, so the
    optimizer's checkpoint loads by name (see :meth:`adamkit.Adam.load_state_dict`), and a
    ``"name"`` that :func:`adamkit.set_lr` accepts.

    With ``layer_decay`` (and ``lr``), parameters in block ``i`` of the model's stack of
    ``n`` blocks (its largest ``nn.ModuleList``, or ``blocks="prefix"``) get
    ``lr * layer_decay ** (n - i)``; parameters before the stack get ``layer_decay ** (n + 1)``
    and those after it the full ``lr`` (BEiT/ELECTRA-style fine-tuning). Groups are then split
    by depth too, named ``"decay.3"``, ``"no_decay.0"``, ...

    Example:
        >>> optimizer = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.1), lr=3e-4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups: expected an nn.Module, got {type(model).__name__}")
    if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
        raise ValueError(f"param_groups: weight_decay={weight_decay!r} is invalid (expected >= 0)")
    if layer_decay is not None:
        if not (isinstance(layer_decay, int | float) and 0 < layer_decay <= 1):
            raise ValueError(
                f"param_groups: layer_decay={layer_decay!r} is invalid (expected 0 < value <= 1)"
            )
        if lr is None:
            raise ValueError("param_groups: layer_decay needs the base lr (lr=...)")
    named = [(n, p) for n, p in model.named_parameters() if include_frozen or p.requires_grad]
    for pattern in (*no_decay, *decay):
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in named):
            raise ValueError(f"param_groups: the pattern {pattern!r} matches no parameter")
    exempt = _no_decay_by_module(model, no_decay_modules)
    depths, count = (
        _depths([n for n, _ in named], model, blocks) if layer_decay is not None else ({}, 0)
    )
    groups: dict[tuple[bool, int], list[tuple[str, Tensor]]] = {}
    for name, p in named:
        decays = id(p) not in exempt
        if _matches(name, no_decay):
            decays = False
        if _matches(name, decay):
            decays = True
        groups.setdefault((decays, depths.get(name, 0)), []).append((name, p))
    result = []
    for (decays, depth), members in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        label = "decay" if decays else "no_decay"
        group: dict[str, Any] = {
            "params": members,
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{label}.{depth}" if layer_decay is not None else label,
        }
        if layer_decay is not None:
            assert lr is not None
            group["lr"] = lr * layer_decay ** (count + 1 - depth)
        elif lr is not None:
            group["lr"] = lr
        result.append(group)
    return result
