"""The fused GPU path (``optim/_device.py``, ``kernels/fused_triton.py``).

With CUDA, these tests step parameters on the GPU. Without it (CI), they run the same code on
CPU tensors: ``gpu_path`` is pointed at the CPU, torch's fused Adam/AdamW kernels have CPU
implementations, and Triton's interpreter (``TRITON_INTERPRET=1``) runs adamkit's kernel with
NumPy. So the math, the plumbing (address tables, chunks, host-computed step scalars, step
counters) and the fallbacks are tested everywhere; compiling for the card and its speed need
the card. The interpreter costs about 40 ms a launch, so runs without CUDA take fewer steps.

Tolerances are test_parity's: fused fp32 against torch 5e-6, fp64 1e-12; the reference 2e-5 and
1e-10 (NAdam fp64 1e-8). In the interpreter the Triton kernel is bit-identical to the CPU kernel.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import adamkit
import adamkit.optim._router as router

from .problems import clone, set_grads
from .registry import CASES, FUSED, Case, params
from .test_parity import (
    NADAM_FP64_REF_TOL,
    REF_TOL,
    assert_matches_reference,
    assert_optimizers_equal,
    reference_run,
    run_twins,
    torch_tolerance,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
#: On a GPU, 200 steps; in the interpreter (slow), 12: past RAdam's switch to the rectified step
#: (step 6) and the registry's 10-step AdEMAMix warmups, so every branch and schedule runs.
STEPS = 200 if CUDA else 12
# The GPU kernels do not step cautious / update_clipping (the C kernel's two passes do): on a
# GPU those groups take the multi-tensor path, which the CPU cases cover.
GPU_CASES = [
    c
    for c in CASES
    if c.kwargs.get("fused")
    and not (c.kwargs.get("cautious") or c.kwargs.get("update_clipping"))
    # (Adafactor's kernel is the C one, of whole CPU tensors: on a GPU it takes torch's ops)
    and c.row.kinds
]
try:
    import triton

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


@pytest.fixture(autouse=True)
def on_the_gpu_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not CUDA:
        monkeypatch.setattr(router, "gpu_path", lambda device: True)
        if HAVE_TRITON and "adamkit.kernels.fused_triton" not in sys.modules:
            # Triton decides at definition (import) whether a kernel is interpreted.
            monkeypatch.setenv("TRITON_INTERPRET", "1")
            importlib.import_module("adamkit.kernels.fused_triton")
    yield


#: Where `make test`'s set-up installs Triton: there a missing Triton is a broken set-up, not
#: a reason to skip.
PROMISED = platform.system() == "Linux" and platform.machine() == "x86_64"


def needs_triton(name: str) -> None:
    if name not in ("Adam", "AdamW") and not HAVE_TRITON:
        if PROMISED and os.environ.get("ADAMKIT_ALLOW_NO_TRITON") != "1":
            pytest.fail(
                "Triton is missing although this platform's set-up installs it (make test); "
                "reinstall it, or set ADAMKIT_ALLOW_NO_TRITON=1 to skip these tests"
            )
        pytest.skip("Triton is not installed (pip install triton, or torch's CUDA build)")


def plans(opt: torch.optim.Optimizer) -> list[Any]:
    cache = opt.__dict__.get("_fused_plans", {})
    return [entry[1] for _, entries in cache.values() for entry in entries]


def plan_kinds(opt: torch.optim.Optimizer) -> set[str]:
    return {type(plan).__name__ for plan in plans(opt)}


def kernel_block() -> int:
    """Elements per program of the Triton kernels."""
    return importlib.import_module("adamkit.kernels.fused_triton").BLOCK if HAVE_TRITON else 1024


def expected_plan(name: str) -> str:
    return "TorchFusedPlan" if name in ("Adam", "AdamW") else "TritonPlan"


def test_without_cuda_the_kernel_runs_interpreted() -> None:
    if CUDA or not HAVE_TRITON:
        pytest.skip("checks the CPU set-up of these tests")
    from adamkit.kernels import fused_triton

    assert type(fused_triton.fused_step).__name__ == "InterpretedFunction"


#: fp64 (the kernel's fp64 compute) on every algorithm with each weight decay (and AMSGrad
#: with it), not with maximize, odd hyperparameters or the own ones, whose arithmetic the fp32
#: cases cover: the interpreter is slow, and fp64 adds no branch of its own there.
REFERENCE_CASES = [
    (case, dtype)
    for case in GPU_CASES
    for dtype in (torch.float32, torch.float64)
    if dtype == torch.float32 or (not case.kwargs.get("maximize") and "weight_decay" in case.kwargs)
]


@pytest.mark.parametrize(
    ("case", "dtype"),
    REFERENCE_CASES,
    ids=[f"{'fp32' if d == torch.float32 else 'fp64'}-{c.id}" for c, d in REFERENCE_CASES],
)
def test_matches_reference(case: Case, dtype: torch.dtype) -> None:
    needs_triton(case.name)
    opt, ps, thetas, states = reference_run(case, dtype, STEPS, device=DEVICE)
    assert plan_kinds(opt) == {expected_plan(case.name)}
    assert all(s["step"].device.type == "cpu" for s in opt.state.values())
    tol = REF_TOL[dtype]
    if case.name == "NAdam" and dtype == torch.float64:
        tol = NADAM_FP64_REF_TOL
    assert_matches_reference(opt, ps, thetas, states, **tol)


@params(GPU_CASES)
def test_matches_torch(case: Case) -> None:
    needs_triton(case.name)
    ours, theirs, ours_p, theirs_p = run_twins(case, torch.float32, STEPS, device=DEVICE)
    assert plan_kinds(ours) == {expected_plan(case.name)}
    assert_optimizers_equal(ours, theirs, ours_p, theirs_p, **torch_tolerance(case, torch.float32))


def _train(opt: torch.optim.Optimizer, ps: list[torch.Tensor], grads: list[Any]) -> None:
    for g in grads:
        set_grads(ps, g)
        opt.step()


def _cpu_twin(
    name: str, sizes: list[int], dtype: torch.dtype, **kwargs: Any
) -> tuple[Any, Any, list[torch.Tensor], list[torch.Tensor]]:
    """An optimizer on the GPU path and its twin on the CPU kernel, on the same values."""
    g = torch.Generator().manual_seed(5)
    cpu_p = [torch.randn(n, generator=g).to(dtype).requires_grad_() for n in sizes]
    gpu_p = [p.detach().to(DEVICE, copy=True).requires_grad_() for p in cpu_p]
    ours = getattr(adamkit, name)(gpu_p, fused=True, **kwargs)
    cpu = getattr(adamkit, name)(cpu_p, fused=True, **kwargs)
    return ours, cpu, gpu_p, cpu_p


@contextmanager
def cpu_kernel() -> Iterator[None]:
    """CPU tensors take the CPU kernel again (the twins the GPU path is compared with)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(router, "gpu_path", lambda device: device.type == "cuda")
        yield


def _run_on_cpu_kernel(opt: torch.optim.Optimizer, ps: list[torch.Tensor], grads: Any) -> None:
    with cpu_kernel():
        _train(opt, ps, grads)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("RAdam", {"weight_decay": 0.1}),
        ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
        ("Adamax", {"maximize": True}),
        ("Adam", {"amsgrad": True}),
    ],
    ids=["RAdam", "NAdam", "Adamax", "Adam-amsgrad"],
)
def test_tensors_spanning_several_programs(name: str, kwargs: dict[str, Any]) -> None:
    """Sizes around the kernel's block (one element, a partial block, exact blocks, a tail)
    give the same result as the CPU kernel: bit for bit in the interpreter, where the Triton
    kernel does the CPU kernel's arithmetic in its order."""
    needs_triton(name)
    block = kernel_block()
    sizes = [1, block - 1, block, block + 1, 2 * block + 5]
    ours, cpu, gpu_p, cpu_p = _cpu_twin(name, sizes, torch.float32, lr=1e-2, **kwargs)
    gen = torch.Generator().manual_seed(6)
    grads = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(8)]
    _train(ours, gpu_p, grads)
    _run_on_cpu_kernel(cpu, cpu_p, grads)
    assert plan_kinds(ours) == {expected_plan(name)}
    exact = not CUDA and name not in ("Adam", "AdamW")  # torch's fused Adam rounds its own way
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 5e-6, "atol": 5e-6}
    for a, b in zip(gpu_p, cpu_p, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), **tol)
        for key, value in cpu.state[b].items():
            torch.testing.assert_close(ours.state[a][key].cpu(), value, **tol)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_params_step_in_fp32(name: str, dtype: torch.dtype) -> None:
    """bf16 and fp16 parameters (and their state) are updated in fp32 and rounded to nearest,
    as torch's fused kernels do: the same as stepping fp32 copies with the CPU kernel and
    rounding parameters and state after every step."""
    needs_triton(name)
    sizes = [7, 300, 2500]
    ours, wide, gpu_p, wide_p = _cpu_twin(name, sizes, dtype, lr=1e-2, weight_decay=0.01)
    wide_p = [p.detach().float().requires_grad_() for p in wide_p]
    wide = getattr(adamkit, name)(wide_p, fused=True, lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(7)
    for _ in range(6):
        grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
        _train(ours, gpu_p, [grads])
        _run_on_cpu_kernel(wide, wide_p, [[g.float() for g in grads]])
        with torch.no_grad():  # round the fp32 twin as the half-precision storage does
            for p in wide_p:
                p.copy_(p.to(dtype).float())
                for key, value in wide.state[p].items():
                    if key not in ("step", "mu_product"):
                        value.copy_(value.to(dtype).float())
    assert plan_kinds(ours) == {expected_plan(name)}
    for a, b in zip(gpu_p, wide_p, strict=True):
        assert a.dtype == dtype and all(
            v.dtype == dtype for k, v in ours.state[a].items() if k not in ("step", "mu_product")
        )
        # Bit for bit in the interpreter (and torch's CPU fused Adam). On a card, allow the rare
        # element where a last-bit difference of the fp32 arithmetic (torch's CUDA kernel)
        # rounds the other way: one unit of the 8-bit or 11-bit significand.
        tol = {"rtol": 8e-3, "atol": 1e-5} if CUDA else {"rtol": 0.0, "atol": 0.0}
        torch.testing.assert_close(a.detach().cpu(), b.detach().to(dtype), **tol)
        for key, value in wide.state[b].items():
            if key not in ("step", "mu_product"):
                got = ours.state[a][key].cpu()
                torch.testing.assert_close(got, value.to(dtype), **tol)


@pytest.mark.parametrize(
    ("name", "precision"), [("Adam", "fp32"), ("NAdam", "fp32"), ("AdamW", "8bit")]
)
def test_resume_from_a_checkpoint_is_exact(name: str, precision: str) -> None:
    """A checkpoint taken on the GPU path (step counters on the CPU, as everywhere) resumes
    bit for bit, in a new optimizer: the GPU copy of torch's step counters is rebuilt, and
    8-bit codes with their scales come back as they were."""
    needs_triton(name if precision == "fp32" else "RAdam")
    sizes = [5, 5000]
    gen = torch.Generator().manual_seed(8)
    grads = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(10)]
    straight, _, straight_p, _ = _cpu_twin(name, sizes, torch.float32, state_precision=precision)
    _train(straight, straight_p, grads)

    first, _, first_p, _ = _cpu_twin(name, sizes, torch.float32, state_precision=precision)
    _train(first, first_p, grads[:5])
    saved = first.state_dict()
    assert all(entry["step"].device.type == "cpu" for entry in saved["state"].values())
    resumed_p = clone(first_p)
    resumed = getattr(adamkit, name)(resumed_p, fused=True, state_precision=precision)
    resumed.load_state_dict(saved)
    _train(resumed, resumed_p, grads[5:])
    for a, b in zip(resumed_p, straight_p, strict=True):
        assert torch.equal(a, b)
    # The same optimizer, reloaded mid-run, drops its plan and continues as well.
    first.load_state_dict(saved)
    _train(first, first_p, grads[5:])
    for a, b in zip(first_p, straight_p, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["AdamW", "RAdam"])
def test_gradients_kept_between_steps(name: str) -> None:
    """``zero_grad(set_to_none=False)`` keeps each .grad tensor: the plan's address table of the
    gradients is reused, and must see the new values."""
    needs_triton(name)
    sizes = [9, 4100]
    ours, cpu, gpu_p, cpu_p = _cpu_twin(name, sizes, torch.float32, lr=1e-2)
    gen = torch.Generator().manual_seed(9)
    for p, q in zip(gpu_p, cpu_p, strict=True):
        p.grad = torch.zeros_like(p)
        q.grad = torch.zeros_like(q)
    for _ in range(5):
        for p, q in zip(gpu_p, cpu_p, strict=True):
            g = torch.randn(q.shape, generator=gen)
            p.grad.copy_(g)  # type: ignore[union-attr]
            q.grad.copy_(g)  # type: ignore[union-attr]
        ours.step()
        with cpu_kernel():
            cpu.step()
    for a, b in zip(gpu_p, cpu_p, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam"])
def test_step_counters_are_followed_after_a_fallback_step_and_a_reset(name: str) -> None:
    """The CPU step counters are the truth, copied to the GPU each step for torch's fused Adam,
    which reads them there. A step that falls back to foreach (a non-contiguous gradient), and
    counters reset by hand, in place or with new tensors, must be followed by the next fused
    step."""
    needs_triton(name)
    gen = torch.Generator().manual_seed(13)
    p = torch.randn(40, 30, generator=gen).to(DEVICE).requires_grad_()
    q = p.detach().clone().requires_grad_()
    ours = getattr(adamkit, name)([p], lr=1e-2)
    ref = getattr(adamkit, name)([q], lr=1e-2, foreach=True)
    for step in range(8):
        g = torch.randn(40, 30, generator=gen).to(DEVICE)
        p.grad = g.t().contiguous().t() if step == 1 else g.clone()  # step 1: not contiguous
        q.grad = g.clone()
        for opt in (ours, ref):
            for state in opt.state.values():
                if step == 4:
                    state["step"].fill_(1.0)
                if step == 6:
                    state["step"] = torch.tensor(2.0)
        ours.step()
        ref.step()
        assert ours.state[p]["step"] == ref.state[q]["step"]
    assert plan_kinds(ours) == {expected_plan(name)}
    torch.testing.assert_close(p, q, rtol=5e-6, atol=5e-6)
    for key, value in ref.state[q].items():
        torch.testing.assert_close(ours.state[p][key], value, rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize("moved", ["params", "grads"])
def test_addresses_off_a_16_byte_boundary_take_the_kernel_without_vector_accesses(
    moved: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole blocks are loaded and stored 16 bytes at a time only where every address in the
    tables is a multiple of 16 bytes. Parameters, or gradients, that are slices of a flat
    buffer at an odd offset (DDP's gradient buckets can be) take the kernel compiled without
    that hint, with the same result; gradients back on a boundary take the other one again."""
    needs_triton("NAdam")
    block = kernel_block()
    sizes = [block + 476, 2 * block + 952]  # whole blocks and a tail each
    gen = torch.Generator().manual_seed(12)
    values = [torch.randn(n, generator=gen) for n in sizes]
    cpu_p = [torch.nn.Parameter(v.clone()) for v in values]
    if moved == "params":
        flat = torch.empty(sum(sizes) + 1, device=DEVICE)
        ends = torch.tensor(sizes).cumsum(0).tolist()
        slices = [flat[end - n + 1 : end + 1] for n, end in zip(sizes, ends, strict=True)]
        gpu_p = [torch.nn.Parameter(s.copy_(v)) for s, v in zip(slices, values, strict=True)]
        assert all(p.data_ptr() % 16 != 0 for p in gpu_p)
    else:
        gpu_p = [torch.nn.Parameter(v.to(DEVICE, copy=True)) for v in values]
    ours = adamkit.NAdam(gpu_p, lr=1e-2, weight_decay=0.1, fused=True)
    cpu = adamkit.NAdam(cpu_p, lr=1e-2, weight_decay=0.1, fused=True)
    kernels = importlib.import_module("adamkit.kernels.fused_triton")
    launched: list[bool] = []  # the ALIGNED each launch was specialized for

    def specialization(*args: Any) -> Any:
        launched.append(args[4])
        return original(*args)

    original = kernels.specialization
    monkeypatch.setattr(kernels, "specialization", specialization)
    aligned = []
    for step in range(6):
        grads = [torch.randn(n, generator=gen) for n in sizes]
        if moved == "grads" and step in (2, 3):
            flat_grad = torch.empty(sum(sizes) + 1, device=DEVICE)
            parts = flat_grad[1:].split(sizes)
            for p, part, g in zip(gpu_p, parts, grads, strict=True):
                p.grad = part.copy_(g)
        else:
            for p, g in zip(gpu_p, grads, strict=True):
                p.grad = g.to(DEVICE, copy=True)
        for q, g in zip(cpu_p, grads, strict=True):
            q.grad = g
        ours.step()
        with cpu_kernel():
            cpu.step()
        (plan,) = plans(ours)
        aligned.append(plan.state_aligned and plan.grads_aligned)
    expected = [False] * 6 if moved == "params" else [True, True, False, False, True, True]
    assert aligned == launched == expected
    tol = {"rtol": 5e-6, "atol": 5e-6} if CUDA else {"rtol": 0.0, "atol": 0.0}
    for a, b in zip(gpu_p, cpu_p, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), **tol)
        for key, value in cpu.state[b].items():
            torch.testing.assert_close(ours.state[a][key].cpu(), value, **tol)


@pytest.mark.parametrize(
    ("name", "kwargs", "dtype"),
    [
        ("Adam", {"amsgrad": True, "weight_decay": 0.1, "state_precision": "8bit"}, torch.float32),
        ("AdamW", {"maximize": True, "state_precision": "bf16"}, torch.float32),
        ("RAdam", {"state_precision": "8bit", "stochastic_rounding": True}, torch.bfloat16),
        ("NAdam", {"state_precision": "bf16"}, torch.bfloat16),
        ("Adamax", {"weight_decay": 0.1, "state_precision": "8bit"}, torch.float32),
        ("Adam", {"stochastic_rounding": True}, torch.bfloat16),
        ("Adam", {"amsgrad": True, "state_precision": "bf16"}, torch.float32),
        ("AdamW", {"state_precision": "bf16", "stochastic_rounding": True}, torch.bfloat16),
    ],
    ids=[
        "Adam-amsgrad-8bit",
        "AdamW-bf16",
        "RAdam-8bit-bf16sr",
        "NAdam-bf16-bf16",
        "Adamax-8bit",
        "Adam-fp32-bf16sr",
        "Adam-amsgrad-bf16",
        "AdamW-bf16-bf16sr",
    ],
)
def test_low_precision_state_matches_the_cpu_kernel(
    name: str, kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    """bf16 and 8-bit state, and stochastically rounded bf16 parameters, through the Triton
    kernel: the CPU kernel's codecs and rounding streams, bit for bit in the interpreter. The
    sizes cover full-precision state for small tensors (8-bit under 4096 elements), a block
    tail, and tensors spanning several programs."""
    needs_triton("RAdam")
    sizes = [7, 300, 5000, 8200]
    lr, steps = 1e-2, 6
    ours, cpu, gpu_p, cpu_p = _cpu_twin(name, sizes, dtype, lr=lr, **kwargs)
    gen = torch.Generator().manual_seed(11)
    grads = [[torch.randn(n, generator=gen).to(dtype) for n in sizes] for _ in range(steps)]
    _train(ours, gpu_p, grads)
    _run_on_cpu_kernel(cpu, cpu_p, grads)
    assert plan_kinds(ours) == {"TritonPlan"}
    if kwargs.get("state_precision") == "8bit":
        assert ours.state[gpu_p[3]]["exp_avg"].dtype == torch.uint8
    for a, b in zip(gpu_p, cpu_p, strict=True):
        if CUDA:  # expected exact too (IEEE operations in the CPU kernel's order, no FMAs);
            # held to test_precision's bound between paths, and one rounding of a bf16 parameter
            rtol = 2**-7 if dtype == torch.bfloat16 else 0.0
            torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=rtol, atol=0.2 * lr)
            continue
        assert torch.equal(a, b)
        assert sorted(ours.state[a]) == sorted(cpu.state[b])
        for key, value in cpu.state[b].items():
            assert torch.equal(ours.state[a][key], value), key


def test_low_precision_state_of_fp16_params_runs_the_multi_tensor_path_or_says_why() -> None:
    needs_triton("Adam")
    torch.manual_seed(0)
    ps = [torch.randn(5000, device=DEVICE, dtype=torch.float16, requires_grad=True)]
    eager_p = clone(ps)
    default = adamkit.AdamW(ps, state_precision="bf16")
    eager = adamkit.AdamW(eager_p, state_precision="bf16", foreach=True)
    for _ in range(3):
        grads = [torch.randn(5000).half()]
        _train(default, ps, [grads])
        _train(eager, eager_p, [grads])
    assert torch.equal(ps[0], eager_p[0])
    strict = adamkit.AdamW(clone(ps), state_precision="8bit", fused=True)
    strict.param_groups[0]["params"][0].grad = torch.randn(5000, device=DEVICE).half()
    with pytest.raises(RuntimeError, match=r"fused=True.*low-precision state or rounding"):
        strict.step()


def test_without_triton_radam_falls_back_and_adam_is_unaffected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = "Triton is not installed (No module named 'triton'); torch's CUDA builds ship it"
    monkeypatch.setattr(router, "triton_unavailable", lambda: reason)
    ps = [torch.randn(300, device=DEVICE, requires_grad=True)]
    ps[0].grad = torch.randn(300, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"RAdam\(fused=True\): Triton is not installed"):
        _stepped("RAdam", ps, fused=True)
    assert plan_kinds(_stepped("RAdam", ps)) == {"NoneType"}  # no plan: the foreach path ran
    assert plan_kinds(_stepped("Adam", ps, fused=True)) == {"TorchFusedPlan"}


def _stepped(name: str, ps: list[torch.Tensor], **kwargs: Any) -> torch.optim.Optimizer:
    copies = clone(ps)
    opt = getattr(adamkit, name)(copies, **kwargs)
    copies[0].grad = ps[0].grad.clone()  # type: ignore[union-attr]
    opt.step()
    return opt


def test_non_contiguous_gradient_falls_back_or_is_refused() -> None:
    needs_triton("NAdam")
    p = torch.randn(40, 30, device=DEVICE, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    grad = torch.randn(30, 40, device=DEVICE).t()
    default, eager = adamkit.NAdam([p]), adamkit.NAdam([q], foreach=True)
    p.grad, q.grad = grad, grad.contiguous()
    default.step()
    eager.step()
    torch.testing.assert_close(p, q, rtol=5e-6, atol=5e-6)
    strict = adamkit.NAdam([p], fused=True)
    with pytest.raises(RuntimeError, match=r"fused=True.*contiguous"):
        strict.step()


def test_gpu_benchmark_harness_runs() -> None:
    """``benchmarks/bench_gpu.py --smoke``: the harness, on the CPU with tiny sizes (on a GPU
    machine the real run is ``python benchmarks/bench_gpu.py``)."""
    if not HAVE_TRITON:
        pytest.skip("the smoke run steps NAdam with the Triton kernel")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--cases", "c", "--algorithms", "Adam,NAdam"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("| (c)")]
    assert len(rows) == 2
    assert "TorchFusedPlan" in rows[0] and "torch fused" in rows[0]
    assert "TritonPlan" in rows[1] and "torch foreach" in rows[1]


def _has_ptxas() -> bool:
    if not HAVE_TRITON:
        return False
    try:
        return bool(triton.knobs.nvidia.ptxas.path)
    except Exception:  # no NVIDIA backend in this Triton build, or no ptxas beside it
        return False


def _variant(
    algorithm: str, decay: int, dtype: str, aligned: bool = True, param_format: int | None = None
) -> dict[str, Any]:
    """``specialization``'s arguments (AMSGrad for Adam, the only algorithm that has it)."""
    variant = {"algorithm": algorithm, "decay": decay, "amsgrad": algorithm == "adam"}
    variant |= {"dtype": dtype, "aligned": aligned}
    return variant if param_format is None else {**variant, "param_format": param_format}


#: The kernels compiled by the test below: every algorithm the Triton plan takes in full
#: precision, each element type, each parameter format with low-precision state, AMSGrad, all
#: three kinds of weight decay, with and without aligned addresses. (Algorithms by their
#: kernel's name; decay: 0 none, 1 coupled, 2 decoupled; parameter formats: 0 fp32, 1 bf16,
#: 2 stochastically rounded bf16.)
COMPILED = [
    _variant("radam", 1, "float32"),
    _variant("nadam", 2, "float32"),
    _variant("adamax", 0, "float32"),
    _variant("nadam", 1, "float64"),
    _variant("radam", 2, "bfloat16"),
    _variant("adamax", 1, "float16"),
    _variant("nadam", 0, "float32", aligned=False),
    _variant("adam", 1, "float32", param_format=0),
    _variant("radam", 2, "bfloat16", param_format=1),
    _variant("nadam", 0, "bfloat16", param_format=2),
    _variant("adamax", 2, "float32", param_format=0),
    _variant("adam", 2, "bfloat16", aligned=False, param_format=2),
]


@pytest.mark.skipif(not _has_ptxas(), reason="needs Triton's NVIDIA backend and its ptxas")
def test_kernels_compile_for_an_h100(tmp_path: Path) -> None:
    """The interpreter runs the kernels' math, not Triton's compiler. Here the compiler builds
    them for sm_90, as ``launch`` would on an H100 (tests/gpu_compile_worker.py), and the PTX
    shows what the kernels promise: no FMA contraction, IEEE square roots and divisions (no
    approximate ones), 16-byte loads and stores exactly where the addresses are aligned, and
    no more than a few bytes of register spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compiled here, not found in a cache
    result = subprocess.run(
        [sys.executable, "-m", "tests.gpu_compile_worker", json.dumps(COMPILED)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["variant"] for r in reports] == COMPILED
    for r in reports:
        variant = r["variant"]
        assert r["fma"] == 0 and r["approximate"] == 0, r
        assert r["div_rn"] > 0, r
        assert (r["sqrt_rn"] > 0) == (variant["algorithm"] != "adamax"), r  # Adamax takes no root
        if variant["aligned"]:  # every array: p, g, m, v (and v_max) read; p, m, v written
            arrays = 4 + variant["amsgrad"]
            assert r["vector_loads"] >= arrays and r["vector_stores"] >= arrays - 1, r
        else:  # a vector access off a 16-byte boundary is a fault on the card
            assert r["vector_loads"] == r["vector_stores"] == 0, r
        # ptxas may trade a few bytes of spill for occupancy; a block too large spills hundreds
        assert r["spill_bytes"] <= 16, r
        assert r["kernel"] == ("fused_step_wide" if "param_format" in variant else "fused_step")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.max_memory_allocated)")
@pytest.mark.parametrize("name", FUSED)
def test_step_allocates_no_parameter_sized_memory_on_the_gpu(name: str) -> None:
    """One pass, no temporaries: a step allocates its small tables at most, where torch's
    foreach path allocates at least the parameters' size (pytorch issue 97712)."""
    needs_triton(name)
    ps = [torch.randn(4_000_000, device="cuda", requires_grad=True) for _ in range(2)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = getattr(adamkit, name)(ps, fused=True)
    opt.step()
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    opt.step()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < 1 << 20  # a parameter is 16 MB


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_parameters_on_two_gpus(name: str) -> None:
    """One bucket per device; each kernel is launched on its bucket's device."""
    needs_triton(name)
    gen = torch.Generator().manual_seed(10)
    values = [torch.randn(3000, generator=gen) for _ in range(2)]
    ps = [v.to(f"cuda:{i}").requires_grad_() for i, v in enumerate(values)]
    cpu_p = [v.clone().requires_grad_() for v in values]
    ours = getattr(adamkit, name)(ps, fused=True)
    cpu = getattr(adamkit, name)(cpu_p, fused=True)
    grads = [[torch.randn(3000, generator=gen) for _ in range(2)] for _ in range(5)]
    _train(ours, ps, grads)
    _train(cpu, cpu_p, grads)
    for a, b in zip(ps, cpu_p, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_a_stray_amsgrad_flag_does_not_reach_the_triton_kernel(precision: str) -> None:
    """``amsgrad`` in a RAdam group: RAdam keeps no running maximum, so the Triton kernel must
    not be specialised for one (it read a third row of a two-row state table)."""
    needs_triton("RAdam")
    torch.manual_seed(5)
    ps = [torch.randn(5000, device=DEVICE, requires_grad=True)]
    qs = clone(ps)
    ours = adamkit.RAdam(ps, state_precision=precision)
    ours.param_groups[0]["amsgrad"] = True
    twin = adamkit.RAdam(qs, state_precision=precision)
    for _ in range(4):
        grad = torch.randn(5000, device=DEVICE)
        ps[0].grad, qs[0].grad = grad.clone(), grad.clone()
        ours.step()
        twin.step()
    assert plan_kinds(ours) == {"TritonPlan"}
    assert torch.equal(ps[0], qs[0])


def _without_the_cpu_library(mp: pytest.MonkeyPatch) -> None:
    """As on a GPU machine where the C kernel could not be built (no compiler)."""
    from adamkit.optim import _base, _fused, _router, _scalars

    for module in (_scalars, _fused, _router):
        mp.setattr(module, "fused_library", lambda: None)
    mp.setattr(_base, "kernel_available", lambda: False)
    mp.setattr(_base, "gpu_path", lambda device: True)


@pytest.mark.parametrize("name", ["Adam", "RAdam", "NAdam", "Adamax"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_gpu_path_needs_no_cpu_library(name: str, precision: str) -> None:
    """Without the CPU library the GPU plans advance the counters with torch and compute the
    same step scalars (optim/_scalars.py): bit-identical to the plans with it, counters of
    different steps in one bucket included."""
    needs_triton(name if precision == "fp32" else "RAdam")
    g = torch.Generator().manual_seed(3)
    values = [torch.randn(n, generator=g) for n in (300, 1100, 7)]
    grads = [[torch.randn(v.shape, generator=g) for v in values] for _ in range(6)]
    runs = []
    for library in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not library:
                _without_the_cpu_library(mp)
            ps = [v.to(DEVICE, copy=True).requires_grad_() for v in values]
            opt = getattr(adamkit, name)(ps, lr=1e-2, fused=True, state_precision=precision)
            assert opt.execution_path() == "fused"
            _train(opt, ps, grads[:3])
            opt.state[ps[1]]["step"].fill_(40.0)  # one tensor at another step count
            _train(opt, ps, grads[3:])
            assert plans(opt) and all(type(p).__name__.endswith("Plan") for p in plans(opt))
            runs.append((opt, ps))
    (ours, ours_p), (bare, bare_p) = runs
    for p, q in zip(ours_p, bare_p, strict=True):
        assert torch.equal(p, q)
        for key, value in ours.state[p].items():
            assert torch.equal(value, bare.state[q][key]), key
