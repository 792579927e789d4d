"""The fused kernel's own concerns: its plan cache, fallbacks, memory, and how it is built.

Its numbers are covered by the parity registry (every algorithm and flag with ``fused=True``
against torch and the NumPy reference, tests/test_parity.py); these tests cover the machinery.
"""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import adamkit

from .artifacts import run
from .problems import clone, make_params, set_grads
from .registry import FUSED


def _twins(
    name: str, **kwargs: object
) -> tuple[list[torch.Tensor], list[torch.Tensor], object, object]:
    torch.manual_seed(0)
    ours_p = make_params(torch.float32)
    eager_p = clone(ours_p)
    ours = getattr(adamkit, name)(ours_p, fused=True, **kwargs)
    eager = getattr(adamkit, name)(eager_p, foreach=True, **kwargs)
    return ours_p, eager_p, ours, eager


def _step_both(ours_p, eager_p, ours, eager, steps: int = 5) -> None:  # type: ignore[no-untyped-def]
    for _ in range(steps):
        grads = [torch.randn_like(p) if p.numel() else torch.zeros_like(p) for p in ours_p]
        set_grads(ours_p, grads)
        set_grads(eager_p, grads)
        ours.step()
        eager.step()


def _assert_close(ours_p: list[torch.Tensor], eager_p: list[torch.Tensor]) -> None:
    for a, b in zip(ours_p, eager_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FUSED)
def test_plan_follows_a_parameter_whose_storage_moves(name: str) -> None:
    ours_p, eager_p, ours, eager = _twins(name)
    _step_both(ours_p, eager_p, ours, eager)
    for p, q in zip(ours_p, eager_p, strict=True):  # p.data = ... gives p new storage
        p.data = p.data.clone()
        q.data = q.data.clone()
    _step_both(ours_p, eager_p, ours, eager)
    _assert_close(ours_p, eager_p)


@pytest.mark.parametrize("name", FUSED)
def test_plan_is_dropped_when_state_is_loaded(name: str) -> None:
    ours_p, eager_p, ours, eager = _twins(name)
    _step_both(ours_p, eager_p, ours, eager)
    snapshot = copy.deepcopy(ours.state_dict())  # state_dict() holds the live tensors
    _step_both(ours_p, eager_p, ours, eager)
    ours.load_state_dict(copy.deepcopy(snapshot))  # new state tensors: a stale plan would
    eager.load_state_dict(copy.deepcopy(snapshot))  # keep writing the old ones
    for p, q in zip(ours_p, eager_p, strict=True):
        with torch.no_grad():
            q.copy_(p)
    _step_both(ours_p, eager_p, ours, eager)
    _assert_close(ours_p, eager_p)
    for p in ours_p:
        assert ours.state[p]["step"].item() == eager.state[eager_p[0]]["step"].item()


def test_changing_which_params_have_grads_replans() -> None:
    ours_p, eager_p, ours, eager = _twins("Adam")
    _step_both(ours_p, eager_p, ours, eager)
    for p, q in zip(ours_p[:2], eager_p[:2], strict=True):
        p.grad = q.grad = None
    ours.step()
    eager.step()
    _assert_close(ours_p, eager_p)


def test_non_contiguous_grad_falls_back_or_is_refused() -> None:
    p = torch.randn(4, 6, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    grad = torch.randn(6, 4).t()  # a transposed, non-contiguous gradient
    default, eager = adamkit.Adam([p]), adamkit.Adam([q], foreach=True)
    p.grad, q.grad = grad, grad.contiguous()
    default.step()
    eager.step()
    torch.testing.assert_close(p, q)
    strict = adamkit.Adam([p], fused=True)
    with pytest.raises(RuntimeError, match="fused=True\\): the fused kernel needs contiguous"):
        strict.step()


def test_step_allocates_no_parameter_sized_memory() -> None:
    """torch's foreach step allocates parameter-sized temporaries (pytorch #97712); the fused
    kernel allocates nothing through torch's allocator at all."""
    params = [torch.randn(256, 1024, requires_grad=True) for _ in range(4)]
    for p in params:
        p.grad = torch.randn_like(p)
    fused, foreach = adamkit.Adam(params, fused=True), adamkit.Adam(clone(params), foreach=True)
    for opt in (fused, foreach):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p)
        opt.step()  # state is allocated on the first step

    def allocated_during_step(opt: torch.optim.Optimizer) -> int:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            opt.step()
        return sum(max(e.cpu_memory_usage, 0) for e in prof.events())

    param_bytes = sum(p.numel() * 4 for p in params)
    assert allocated_during_step(foreach) >= param_bytes  # the comparison is meaningful
    assert allocated_during_step(fused) < 4096


def _script(body: str) -> str:
    return textwrap.dedent(body)


def test_kernel_builds_into_an_empty_cache_and_is_reused(tmp_path: Path) -> None:
    script = _script(
        """
        import time, torch, adamkit
        from adamkit.kernels import _build
        p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
        start = time.perf_counter(); adamkit.RAdam([p], fused=True).step()
        print(sorted(f.name for f in _build.cache_dir().iterdir()), time.perf_counter() - start)
        """
    )
    env_cache = tmp_path / "cache"
    env = {"ADAMKIT_CACHE_DIR": str(env_cache), "ADAMKIT_CFLAGS": "-O0"}  # builds faster
    first = run([sys.executable, "-c", script], tmp_path, env)
    assert first.returncode == 0, first.stderr
    (library,) = env_cache.glob("*.so")
    built = library.stat()
    second = run([sys.executable, "-c", script], tmp_path, env)
    assert second.returncode == 0, second.stderr
    reused = library.stat()  # a rebuild renames a new file into place: another inode and time
    assert (reused.st_ino, reused.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    files = sorted(f.name for f in env_cache.iterdir())  # the library, its checksum, its lock
    assert len(files) == 3 and files[0].startswith("fused_cpu-")
    assert [Path(f).suffix for f in files] == [".lock", ".sha256", ".so"]
    assert first.stdout.split("]")[0] == second.stdout.split("]")[0]  # no second build


def test_without_a_compiler_the_default_falls_back_and_fused_true_says_why(tmp_path: Path) -> None:
    script = _script(
        """
        import torch, adamkit
        from adamkit.kernels import unavailable_reason
        p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
        opt = adamkit.Adam([p]); opt.step()
        print(opt.execution_path(), "|", unavailable_reason())
        try:
            adamkit.Adam([p], fused=True)
        except RuntimeError as error:
            print(error)
        """
    )
    env = {"ADAMKIT_CACHE_DIR": str(tmp_path / "empty"), "CC": "", "PATH": str(tmp_path)}
    result = run([sys.executable, "-c", script], tmp_path, env)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first == "foreach | no C compiler found (set CC, or install gcc)"
    assert "adamkit.Adam(fused=True): the fused CPU kernel is unavailable (no C compiler" in second


@pytest.mark.parametrize("name", FUSED)
def test_step_counter_replaced_by_a_new_tensor_is_followed(name: str) -> None:
    """A training loop may reset ``state["step"]`` by assigning a new tensor (not in place):
    the cached plan must count the new tensor, not keep bumping the old one."""
    ours_p, eager_p, ours, eager = _twins(name)
    _step_both(ours_p, eager_p, ours, eager, steps=3)
    for opt in (ours, eager):
        for state in opt.state.values():
            state["step"] = torch.tensor(0.0)
    _step_both(ours_p, eager_p, ours, eager, steps=3)
    _assert_close(ours_p, eager_p)
    assert {s["step"].item() for s in ours.state.values()} == {3.0}


def test_state_replaced_from_outside_is_used() -> None:
    """ZeroRedundancyOptimizer.load_state_dict (for one) assigns ``optim.state[p]`` directly;
    the cached kernel plan must step the new state, not the old tensors."""
    p = torch.nn.Parameter(torch.randn(64, 80))
    opt = adamkit.Adam([p], fused=True)
    p.grad = torch.ones_like(p)
    opt.step()
    opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
    opt.state[p]["step"] = torch.tensor(100.0)
    opt.step()
    assert opt.state[p]["step"].item() == 101.0


def test_a_plan_that_cannot_read_its_own_tensors_steps_on_foreach_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last line of defence: a plan built from these very tensors that still refuses
    them (an internal fault no check names) never reaches the kernel; the group is stepped by
    torch's operations instead, with one warning, and keeps matching the foreach path."""
    from adamkit.optim import _fused

    ours_p, eager_p, ours, eager = _twins("AdamW", weight_decay=0.1)
    _step_both(ours_p, eager_p, ours, eager, steps=2)
    monkeypatch.setattr(_fused.FusedPlan, "read", lambda self, *args: None)
    with pytest.warns(RuntimeWarning, match=r"cannot read this group's tensors as planned"):
        _step_both(ours_p, eager_p, ours, eager, steps=3)
    _assert_close(ours_p, eager_p)
    for p, q in zip(ours_p, eager_p, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ours.state[p][key], eager.state[q][key])


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("value", [-5.0, float("nan")], ids=["negative", "nan"])
def test_a_step_counter_broken_in_place_is_refused_and_nothing_changes(
    name: str, value: float
) -> None:
    """``state["step"].fill_(-5)`` keeps the tensor, so the plan does not re-check it: the
    step scalars then are (complex ADOPT bounds, log of a negative count...). The fused step
    refuses it as the eager paths do, with the counter and the parameters as they were."""
    p = torch.randn(5000, requires_grad=True)
    opt = getattr(adamkit, name)([p], lr=1e-2, fused=True)
    for _ in range(2):
        p.grad = torch.randn(5000)
        opt.step()
    before = p.detach().clone()
    opt.state[p]["step"].fill_(value)
    with pytest.raises(ValueError, match="a step count must be a finite number >= 0"):
        opt.step()
    assert torch.equal(p, before)
    torch.testing.assert_close(opt.state[p]["step"], torch.tensor(value), equal_nan=True)
