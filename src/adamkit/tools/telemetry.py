"""Optimizer telemetry: per step and per param group, what the optimizer actually did.

Attach it to any ``torch.optim`` optimizer (it uses the optimizer's step hooks):

    >>> telemetry = adamkit.Telemetry(optimizer, "telemetry.jsonl")   # or .csv
    >>> ...train...
    >>> telemetry.close()        # then: adamkit plot-telemetry telemetry.jsonl -o telemetry.png

Each record has ``step``, ``group`` (index), ``name`` (the group's ``"name"`` if any), ``lr``
(the lr used), ``grad_norm``, ``update_norm`` (``||theta_after - theta_before||``),
``param_norm`` (after the step), ``update_ratio`` (update / param norm: around 1e-3 is the
usual healthy range), ``skipped`` (the optimizer skipped the step: ``nonfinite="skip"``) and, for
RAdam, ``rho_t`` and ``rectified`` (whether the adaptive step was used); for AdEMAMix,
``alpha_t`` and ``beta3_t`` (its warmed-up mixing weight and slow decay); for schedule-free
optimizers (adamkit's and the ``schedulefree`` package's), ``average_weight`` (the weight
:math:`c_{t+1}` of this step's iterate in the average x) and, as ``lr``, the warmed-up lr
the step used; with ``cautious=True``, ``kept_fraction`` (of the update's elements), with
``update_clipping=True``, ``clip_factor`` (the mean factor the lr was scaled by); for
Adafactor (adamkit's and torch's), ``relative_step`` (``min(lr, 1 / sqrt(t))``)
and ``clip_factor`` (the mean over its tensors of ``1 / max(1, RMS(U) / d)``). Recording
costs a copy of the parameters on the steps it records: use ``every=N`` for large models.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._plot import log_axis, png_path
from ..optim.adafactor import Adafactor, adafactor_clip_factors
from ..optim.ademamix import ademamix_schedules
from ..optim.radam import radam_rectification
from ..optim.schedulefree import averaging_weight

__all__ = ["FIELDS", "Telemetry", "plot_telemetry", "read_telemetry"]

#: The Adafactor classes whose state telemetry reads (torch's since 2.5).
_ADAFACTORS = (Adafactor, *([torch.optim.Adafactor] if hasattr(torch.optim, "Adafactor") else []))

FIELDS = [
    "step",
    "group",
    "name",
    "lr",
    "grad_norm",
    "update_norm",
    "param_norm",
    "update_ratio",
    "skipped",
    "rho_t",
    "rectified",
    "alpha_t",
    "beta3_t",
    "average_weight",
    "kept_fraction",
    "clip_factor",
    "relative_step",
]


def _norm(tensors: Sequence[Tensor]) -> float:
    if not tensors:
        return 0.0
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return float(torch.linalg.vector_norm(torch.stack([n.float().cpu() for n in norms])))


class Telemetry:
    """Record what ``optimizer`` does at every ``every``-th step into ``path`` (JSONL or CSV)."""

    def __init__(self, optimizer: Optimizer, path: str | Path, *, every: int = 1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Telemetry: expected a torch.optim.Optimizer, got {optimizer!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Telemetry: every={every!r} is invalid (expected an integer >= 1)")
        self.path = Path(path)
        if self.path.suffix not in (".jsonl", ".csv"):
            raise ValueError(f"Telemetry: path={str(path)!r} must end in .jsonl or .csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.optimizer, self.every, self.steps = optimizer, every, 0
        self.records: list[dict[str, Any]] = []
        self._file: TextIO | None = self.path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, FIELDS) if self.path.suffix == ".csv" else None
        if self._csv is not None:
            self._csv.writeheader()
        self._before: list[list[Tensor]] | None = None
        self._pre = optimizer.register_step_pre_hook(self._pre_step)
        self._post = optimizer.register_step_post_hook(self._post_step)

    def _recording(self) -> bool:
        return self.steps % self.every == 0

    def _pre_step(self, optimizer: Optimizer, *_: Any) -> None:
        if not self._recording():
            return
        with torch.no_grad():
            self._grad_norms = [
                _norm([p.grad for p in g["params"] if p.grad is not None])
                for g in optimizer.param_groups
            ]
            self._before = [
                [p.detach().clone() for p in g["params"]] for g in optimizer.param_groups
            ]

    def _post_step(self, optimizer: Optimizer, *_: Any) -> None:
        if self._before is not None:
            with torch.no_grad():
                for index, (group, before) in enumerate(
                    zip(optimizer.param_groups, self._before, strict=True)
                ):
                    self._write(self._record(optimizer, index, group, before))
            self._before = None
        self.steps += 1

    def _record(
        self, optimizer: Optimizer, index: int, group: dict[str, Any], before: list[Tensor]
    ) -> dict[str, Any]:
        params = list(group["params"])
        update = _norm([p.detach() - b for p, b in zip(params, before, strict=True)])
        param_norm = _norm(params)
        lr = group["lr"]
        record: dict[str, Any] = {
            "step": self.steps,
            "group": index,
            "name": group.get("name", ""),
            "lr": float(lr.item() if isinstance(lr, Tensor) else lr),
            "grad_norm": self._grad_norms[index],
            "update_norm": update,
            "param_norm": param_norm,
            "update_ratio": update / param_norm if param_norm else math.inf,
            "skipped": bool(getattr(optimizer, "_last_step_skipped", False)),
            "rho_t": None,
            "rectified": None,
            "alpha_t": None,
            "beta3_t": None,
            "average_weight": None,
            "kept_fraction": None,
            "clip_factor": None,
            "relative_step": None,
        }
        if type(optimizer).__name__ == "RAdam":
            steps = [optimizer.state[p]["step"] for p in params if "step" in optimizer.state[p]]
            if steps:
                rho_t, r_t = radam_rectification(float(steps[0]), float(group["betas"][1]))
                record["rho_t"], record["rectified"] = rho_t, r_t is not None
        if type(optimizer).__name__ == "AdEMAMix":
            steps = [optimizer.state[p]["step"] for p in params if "step" in optimizer.state[p]]
            if steps:
                own = (group["alpha"], group["beta3"], group["t_alpha"], group["t_beta3"])
                beta1 = float(group["betas"][0])
                alpha_t, beta3_t = ademamix_schedules(float(steps[0]), beta1, *map(float, own))
                record["alpha_t"], record["beta3_t"] = alpha_t, beta3_t
        stats = getattr(optimizer, "update_stats", None)
        if isinstance(stats, list) and index < len(stats):  # cautious, update_clipping
            record["kept_fraction"] = stats[index]["kept_fraction"]
            record["clip_factor"] = stats[index]["clip_factor"]
        # adamkit's or torch's (the same state; transformers' and timm's Adafactor keep others)
        if isinstance(optimizer, _ADAFACTORS) and not record["skipped"]:
            steps = [optimizer.state[p]["step"] for p in params if "step" in optimizer.state[p]]
            if steps:
                record["relative_step"] = min(record["lr"], 1 / float(max(steps)) ** 0.5)
            factors = adafactor_clip_factors(optimizer, group)
            record["clip_factor"] = sum(factors) / len(factors) if factors else None
        if "train_mode" in group and group.get("k", 0) > 0:  # schedule-free: its own warmup
            record["lr"] = float(group["scheduled_lr"])
            record["average_weight"] = averaging_weight(group)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is None:
            return
        if self._csv is not None:
            self._csv.writerow(record)
        else:
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Detach from the optimizer and close the file."""
        self._pre.remove()
        self._post.remove()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _value(text: str) -> Any:
    if text in ("", "None"):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def read_telemetry(path: str | Path) -> list[dict[str, Any]]:
    """The records of a telemetry file (JSONL or CSV)."""
    path = Path(path)
    with path.open() as f:
        if path.suffix == ".csv":
            return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return [json.loads(line) for line in f if line.strip()]


def plot_telemetry(path: str | Path, out: str | Path = "telemetry.png") -> Path:
    """Plot lr, gradient norm, update/param ratio and (if any) RAdam's rho_t, AdEMAMix's
    alpha_t and beta3_t, schedule-free's average_weight, cautious's kept_fraction, update
    clipping's (and Adafactor's) clip_factor and Adafactor's relative_step per group to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_telemetry(path)
    if not records:
        raise ValueError(f"plot_telemetry: {path} has no records")
    panels = [("lr", False), ("grad_norm", True), ("update_ratio", True)]
    extra = (
        ("rho_t", False),
        ("alpha_t", False),
        ("beta3_t", False),
        ("average_weight", True),
        ("kept_fraction", False),
        ("clip_factor", False),
        ("relative_step", True),
    )
    for key, log in extra:
        if any(r.get(key) is not None for r in records):
            panels.append((key, log))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), dpi=110, sharex=True)
    groups = sorted({r["group"] for r in records})
    for ax, (key, log) in zip(axes, panels, strict=True):
        for g in groups:
            rows = [r for r in records if r["group"] == g and r.get(key) is not None]
            label = next((r["name"] for r in rows if r.get("name")), f"group {g}")
            values = [r[key] for r in rows]
            if log:  # a zero (an lr=0 warmup step, a skipped step) is a gap, not a cliff
                values = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
            ax.plot([r["step"] for r in rows], values, label=label)
        skipped = [r["step"] for r in records if r.get("skipped")]
        for step in skipped:
            ax.axvline(step, color="red", alpha=0.3)
        ax.set_ylabel(key)
        if log:
            log_axis(ax)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"optimizer telemetry: {Path(path).name}")
    if len(groups) > 1:
        axes[0].legend()
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    out = png_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
