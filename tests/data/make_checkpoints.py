"""Write the small checkpoint files that later adamkit releases must keep loading.

Run once per released state format (``python tests/data/make_checkpoints.py``); it writes
``tests/data/format<N>/<Algorithm>.pt`` for the current format and never overwrites a file.
Each file holds the parameters and the optimizer state after a few steps, the gradients of the
next steps, and the parameters those steps gave with the release that wrote the file, so
tests/test_load.py can check that a newer adamkit continues the run the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

import adamkit
from adamkit.optim import STATE_FORMAT

ALGORITHMS = {
    "Adam": {"amsgrad": True, "weight_decay": 0.1},
    "AdamW": {},
    "RAdam": {"decoupled_weight_decay": True, "weight_decay": 0.01},
    "NAdam": {},
    "Adamax": {},
    "Adafactor": {"weight_decay": 0.01},  # from state format 3 (fp32 state only)
}
BEFORE, AFTER = 8, 4


#: What each format adds: format 2 files hold 8-bit state (a tensor big enough to be coded),
#: with the codes under the moments' keys; format 3 files the same state, its codes under
#: ``<moment>_codes``.
CODED_SHAPES = [(3, 2), (4,), (64, 80)]
FORMAT_KWARGS: dict[int, dict[str, object]] = {
    1: {},
    2: {"state_precision": "8bit"},
    3: {"state_precision": "8bit"},
}
FORMAT_SHAPES: dict[int, list[tuple[int, ...]]] = {
    1: [(3, 2), (4,)],
    2: CODED_SHAPES,
    3: CODED_SHAPES,
}


def make(name: str, kwargs: dict[str, object]) -> dict[str, object]:
    generator = torch.Generator().manual_seed(7)
    row = getattr(adamkit, name).algorithm
    kwargs = {**kwargs, **FORMAT_KWARGS[STATE_FORMAT]}
    if kwargs.get("state_precision", "fp32") not in row.precisions:
        kwargs.pop("state_precision")
    params = [torch.randn(shape, generator=generator) for shape in FORMAT_SHAPES[STATE_FORMAT]]
    named = [(f"layer.{i}", p.requires_grad_()) for i, p in enumerate(params)]
    optimizer = getattr(adamkit, name)(named, lr=0.01, foreach=True, **kwargs)
    grads = [
        [torch.randn(p.shape, generator=generator) for p in params] for _ in range(BEFORE + AFTER)
    ]
    for step in range(BEFORE):
        for p, g in zip(params, grads[step], strict=True):
            p.grad = g.clone()
        optimizer.step()
    saved = {
        "params": [p.detach().clone() for p in params],
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # it holds the live tensors
        "kwargs": kwargs,
        "grads": grads[BEFORE:],
    }
    for step in range(BEFORE, BEFORE + AFTER):
        for p, g in zip(params, grads[step], strict=True):
            p.grad = g.clone()
        optimizer.step()
    saved["expected"] = [p.detach().clone() for p in params]
    return saved


def main() -> None:
    folder = Path(__file__).with_name(f"format{STATE_FORMAT}")
    folder.mkdir(exist_ok=True)
    for name, kwargs in ALGORITHMS.items():
        path = folder / f"{name}.pt"
        if path.exists():
            print(f"kept {path} (a released format's files never change)")
            continue
        torch.save(make(name, kwargs), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
