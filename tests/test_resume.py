"""Exact resume in a fresh process, for every optimizer x flag case of the registry, each with a
schedule: train N steps, save optimizer, scheduler and parameters to a file, load them into new
objects in another Python process, train M more steps there: every parameter, state tensor and
lr is bit-identical to N + M uninterrupted steps."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import adamkit

from .artifacts import run
from .problems import grad_stream, make_params, set_grads
from .registry import CASES
from .test_schedules import SPECS

ROOT = Path(__file__).resolve().parents[1]
BEFORE, AFTER = 7, 6

# Runs in the fresh process: rebuild every case from its kwargs, load, continue, save results.
RESUME = """
import sys, torch, adamkit
sys.path.insert(0, {root!r})
from tests.problems import set_grads
from tests.registry import CASES
saved = torch.load({path!r}, weights_only=True)
results = []
for index, entry in enumerate(saved):
    case = CASES[index]
    params = [torch.zeros_like(p).requires_grad_() for p in entry["params"]]
    opt = case.ours(params, **case.kwargs)
    sched = adamkit.Scheduler(opt, entry["spec"])
    opt.load_state_dict(entry["optimizer"])
    sched.load_state_dict(entry["scheduler"])
    with torch.no_grad():
        for p, q in zip(params, entry["params"]):
            p.copy_(q)
    lrs = []
    for grads in entry["grads"]:
        set_grads(params, grads)
        opt.step()
        lrs.append(adamkit.get_lr(opt)[0])
        sched.step()
    results.append({{"params": [p.detach() for p in params], "lrs": lrs,
                    "state": [opt.state[p] for p in params]}})
torch.save(results, {out!r})
"""


def _run_case(index: int) -> tuple[dict[str, object], dict[str, object]]:
    """(what the fresh process needs, the uninterrupted run's results) for one case."""
    case = CASES[index]
    spec = SPECS[index % len(SPECS)]
    params = make_params(torch.float32, seed=index)
    opt = case.ours(params, **case.kwargs)
    sched = adamkit.Scheduler(opt, spec)
    stream = list(grad_stream(params, BEFORE + AFTER, seed=index))
    lrs = []
    entry: dict[str, object] = {}
    for step, grads in enumerate(stream):
        if step == BEFORE:
            entry = {
                "spec": spec,
                "params": [p.detach().clone() for p in params],
                "optimizer": _detached(opt.state_dict()),
                "scheduler": sched.state_dict(),
                "grads": stream[BEFORE:],
            }
        set_grads(params, grads)
        opt.step()
        if step >= BEFORE:
            lrs.append(adamkit.get_lr(opt)[0])
        sched.step()
    expected = {
        "params": [p.detach() for p in params],
        "lrs": lrs,
        "state": [opt.state[p] for p in params],
    }
    return entry, expected


def _detached(state_dict: dict[str, object]) -> dict[str, object]:
    import copy

    return copy.deepcopy(state_dict)  # state_dict() holds the live tensors


def test_every_case_resumes_bit_identically_in_a_fresh_process(tmp_path: Path) -> None:
    entries, expected = zip(*(_run_case(i) for i in range(len(CASES))), strict=True)
    path, out = tmp_path / "checkpoints.pt", tmp_path / "resumed.pt"
    torch.save(list(entries), path)
    script = RESUME.format(root=str(ROOT), path=str(path), out=str(out))
    result = run([sys.executable, "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(out, weights_only=True)
    assert len(resumed) == len(CASES)
    for case, got, want in zip(CASES, resumed, expected, strict=True):
        assert got["lrs"] == want["lrs"], case.id
        for i, (p, q) in enumerate(zip(got["params"], want["params"], strict=True)):
            assert torch.equal(p, q), f"{case.id}: param {i}"
        for i, (s, t) in enumerate(zip(got["state"], want["state"], strict=True)):
            assert s.keys() == t.keys(), f"{case.id}: param {i}"
            for key in s:
                assert torch.equal(s[key], t[key]), f"{case.id}: param {i} {key}"
