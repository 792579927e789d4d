"""The fused kernel under abuse: what a training loop or an adversary may do to the tensors
between two steps, and the environments a cluster gives (shared caches, damaged files, no
compiler, noexec mounts, small stacks).

The kernel takes raw pointers, so each of these, before the fix, wrote out of bounds, read freed
memory, reinterpreted bits, or raced. Whatever might crash runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import adamkit
from adamkit.kernels import _build

from .artifacts import run
from .registry import TABLE
from .trust_inproc import _close, _steps

ROOT = Path(__file__).resolve().parents[1]
#: For the tests of the build and its cache, which build into empty caches: the machinery is
#: what they test, and -O0 compiles in a twelfth of -O3's time (the suite's other tests use the
#: real -O3 build; tests/test_targets.py the portable ones).
QUICK_BUILD = {"ADAMKIT_CFLAGS": "-O0"}


def _script(body: str, tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    """Run ``body`` in a fresh interpreter; it prints one JSON line last, returned parsed."""
    result = run([sys.executable, "-c", textwrap.dedent(body)], tmp_path, env)
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result


# ------------------------------------------------------------------ 1. a resized parameter
def test_a_resized_parameter_is_refused_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    """``p.data = torch.zeros(2 * n)`` after a step: the old kernel wrote exp_avg/exp_avg_sq
    past their end (heap corruption). Now every algorithm raises, naming the parameter."""
    found, _ = _script(
        """
        import json, torch, adamkit
        from adamkit.optim._algorithms import ALGORITHMS
        out = {}
        for name, row in ALGORITHMS.items():
            for precision in row.precisions:
                model = torch.nn.Linear(4096, 2)
                opt = getattr(adamkit, name)(model.named_parameters(), state_precision=precision)
                model(torch.randn(3, 4096)).sum().backward()
                opt.step()
                canary = torch.arange(10000.0)
                model.weight.data = torch.zeros(2 * model.weight.numel())
                model.weight.grad = torch.ones_like(model.weight)
                try:
                    opt.step()
                    out[f"{name} {precision}"] = "stepped"
                except RuntimeError as error:
                    out[f"{name} {precision}"] = str(error)
                assert torch.equal(canary, torch.arange(10000.0))
                assert (model.weight == 0).all()
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for key, message in found.items():
        name, precision = key.split()
        row = TABLE[name]
        # The multi-tensor path: torch's own size check (also where a copy of the weights
        # beside low-precision moments gives a tensor two formats, which the kernels refuse).
        if (not row.kinds and row.elementwise) or (row.copies and precision != "fp32"):
            assert "must match the size of tensor" in message, (key, message)
            continue
        assert "parameter 'weight' has 16384 elements" in message, (key, message)
        assert "was the parameter replaced or resized" in message


# ------------------------------- 2-4. state and counters changed by hand (in a subprocess)
def test_state_changed_by_hand(tmp_path: Path) -> None:
    """The tests of tests/trust_inproc.py read freed memory or wrote out of bounds before the
    fix (the suite aborted), so they run in a pytest process of their own: a regression that
    crashes it fails this test, and its output names the test that was running."""
    result = run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/trust_inproc.py"],
        ROOT,
    )
    outcome = f"rc {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, outcome  # pytest exits 5 where it collected nothing


def test_a_float64_mu_product_beside_a_float32_step_is_read_as_float64() -> None:
    torch.manual_seed(0)
    ours_p = [torch.randn(300, requires_grad=True)]
    torch_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours, theirs = (
        adamkit.NAdam(ours_p, lr=1e-2),
        torch.optim.NAdam(torch_p, lr=1e-2, foreach=False),
    )
    _steps(ours, theirs, ours_p, torch_p, 2)
    for opt in (ours, theirs):
        for state in opt.state.values():
            state["mu_product"] = state["mu_product"].double()
    _steps(ours, theirs, ours_p, torch_p, 4)
    _close(ours_p, torch_p)
    state = next(iter(ours.state.values()))
    twin = next(iter(theirs.state.values()))
    assert state["mu_product"].dtype == torch.float64
    assert state["mu_product"].item() == pytest.approx(twin["mu_product"].item(), rel=1e-12)


# ------------------------------------------------------- 5. a gradient of the wrong size
def test_a_gradient_smaller_than_its_parameter_broadcasts_as_in_torch(tmp_path: Path) -> None:
    """``p.grad.data = torch.ones(1)``: the old kernel read past the end (SIGSEGV at 5e7
    elements). Here 8e6: a read past the one-element gradient gives values that differ from
    torch's broadcast, or from one element to the next, where it does not crash."""
    found, _ = _script(
        """
        import json, torch, adamkit
        from adamkit.optim._algorithms import ALGORITHMS
        out = []
        for name, row in ((n, row) for n, row in ALGORITHMS.items() if row.torch_twin):
            p = torch.zeros(8_000_000, requires_grad=True)
            # Adafactor's step is relative to the parameter's RMS: its fp32 norm rounds with
            # the size, so its twin has the same size (the others' are elementwise).
            q = torch.zeros(5 if row.elementwise else p.numel(), requires_grad=True)
            ours = getattr(adamkit, name)([p])
            theirs = getattr(torch.optim, ALGORITHMS[name].torch_twin)([q], foreach=False)
            for opt, t in ((ours, p), (theirs, q)):
                t.grad = torch.ones_like(t); opt.step()
                t.grad.data = torch.full((1,), 2.0); opt.step()
            out.append([p[:5].tolist(), q[:5].tolist(), bool((p == p[0]).all())])
        try:
            adamkit.Adam([p], fused=True).step()
        except RuntimeError as error:
            out.append(str(error))
        print(json.dumps(out))
        """,
        tmp_path,
    )
    *pairs, refusal = found
    for ours, theirs, uniform in pairs:
        assert ours == pytest.approx(theirs, rel=1e-6) and uniform
    assert (
        "fused=True): the fused kernel needs contiguous gradients of the parameters' shape"
        in refusal
    )


# ------------------------------------------------------------ 6. overlapping parameters
def test_overlapping_parameters_are_stepped_one_at_a_time_as_torch_does() -> None:
    """Two parameters viewing one storage: the threaded kernel raced (5 different results
    in 30 runs). Now such a bucket steps parameter by parameter, as torch's for-loop."""
    results = set()
    torch.set_num_threads(2)
    for _ in range(30):
        base = torch.zeros(400_000)
        a, b = torch.nn.Parameter(base[:300_000]), torch.nn.Parameter(base[100_000:])
        ref = torch.zeros(400_000)
        c, d = torch.nn.Parameter(ref[:300_000]), torch.nn.Parameter(ref[100_000:])
        ours = adamkit.Adam([a, b], lr=0.1)
        theirs = torch.optim.Adam([c, d], lr=0.1, foreach=False)
        for _ in range(3):
            for x, y in ((a, c), (b, d)):
                x.grad = torch.linspace(-1, 1, x.numel())
                y.grad = x.grad.clone()
            ours.step()
            theirs.step()
        torch.testing.assert_close(base, ref, rtol=0, atol=0)
        results.add(base.sum().item())
    assert len(results) == 1
    with pytest.raises(RuntimeError, match="fused=True\\): tensors of this bucket overlap"):
        adamkit.Adam([a, b], fused=True).step()


def test_a_gradient_that_is_its_parameter_is_not_given_to_the_threads() -> None:
    p = torch.nn.Parameter(torch.ones(200_000))
    q = torch.nn.Parameter(torch.ones(200_000))
    ours, theirs = adamkit.Adam([p]), torch.optim.Adam([q], foreach=False)
    for _ in range(3):
        p.grad, q.grad = p.data, q.data.clone()  # the gradient aliases the parameter
        ours.step()
        theirs.step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)


# ----------------------------------------------------------- 7-11. the build and its cache
_STEP = """
import json, warnings, torch, adamkit
from adamkit.kernels import unavailable_reason
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
    opt = adamkit.Adam([p]); opt.step(); opt.step()
print(json.dumps({"path": opt.execution_path(), "reason": unavailable_reason(),
                  "p": p.tolist(), "warnings": [str(w.message) for w in caught]}))
"""


def _library(cache: Path) -> Path:
    (library,) = cache.glob("fused_cpu-*.so")
    return library


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel cache built once by a real first step, for the tests to copy and damage."""
    where = tmp_path_factory.mktemp("built")
    found, _ = _script(_STEP, where, {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(where / "cache")})
    assert found["path"] == "fused"
    return where / "cache"


def _fresh_cache(tmp_path: Path, built: Path) -> tuple[Path, dict[str, str]]:
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    return cache, {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(cache)}


def test_the_cache_key_follows_what_the_compiler_targets(tmp_path: Path) -> None:
    """A cache shared by machines with different CPUs: one compiler command, and a key that
    must differ where it targets other instructions. Here the same compiler (one path, one
    version) is told, on the second run only, that this CPU lacks AVX2: the old key (compiler
    path, its mtime, the CPU's model name) handed that run the AVX2 build."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    wrapper = tmp_path / "cc"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -n "$NO_AVX2" ]; then exec {gcc} "$@" -mno-avx2; fi\nexec {gcc} "$@"\n'
    )
    wrapper.chmod(0o755)
    cache = tmp_path / "cache"
    env = {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(cache), "CC": str(wrapper)}
    first, _ = _script(_STEP, tmp_path, env)
    second, _ = _script(_STEP, tmp_path, {**env, "NO_AVX2": "1"})
    assert first["path"] == second["path"] == "fused"
    assert len(list(cache.glob("fused_cpu-*.so"))) == 2
    # A portable target (ADAMKIT_CFLAGS) is the same build on both: one more library, shared.
    portable = {**env, "ADAMKIT_CFLAGS": "-O0 -march=x86-64-v2"}
    for extra in ({}, {"NO_AVX2": "1"}):
        found, _ = _script(_STEP, tmp_path, {**portable, **extra})
        assert found["path"] == "fused"
    assert len(list(cache.glob("fused_cpu-*.so"))) == 3


@pytest.mark.parametrize(
    "damage", ["truncated", "zero tail", "empty", "random", "another library", "directory"]
)
def test_a_damaged_library_is_rebuilt_once(tmp_path: Path, built: Path, damage: str) -> None:
    """Truncated (SIGBUS), zeroed (SIGSEGV), empty, random, another library, a directory:
    each used to be loaded unchecked. Now it fails its checksum and is rebuilt."""
    cache, env = _fresh_cache(tmp_path, built)
    library = _library(cache)
    data = library.read_bytes()
    if damage == "truncated":
        library.write_bytes(data[: len(data) // 2])
    elif damage == "zero tail":
        library.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    elif damage == "empty":
        library.write_bytes(b"")
    elif damage == "random":
        library.write_bytes(os.urandom(len(data)))
    elif damage == "another library":
        import ctypes.util

        libm = ctypes.util.find_library("m") or "libm.so.6"
        candidates = [
            Path(d) / libm for d in ("/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib")
        ]
        source = next((c for c in candidates if c.is_file()), None)
        if source is None:
            pytest.skip("no libm file found to plant")
        library.write_bytes(source.read_bytes())
    else:
        library.unlink()
        library.mkdir()
    found, _ = _script(_STEP, tmp_path, env)
    assert found["path"] == "fused" and found["warnings"] == [], found
    assert _library(cache).read_bytes() != b"" and _build._verified(_library(cache))


def test_a_damaged_library_that_cannot_be_rebuilt_falls_back_with_one_warning(
    tmp_path: Path,
) -> None:
    """The library is damaged and the rebuild fails (here: a compiler that stops compiling
    once a flag file exists): the step runs on the foreach path, with one warning."""
    flag, gcc = tmp_path / "broken", shutil.which("gcc") or shutil.which("cc")
    wrapper = tmp_path / "cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *fused_cpu.c*) if [ -e {flag} ]; then echo "cc1: out of memory" >&2; '
        f'exit 1; fi;; esac\nexec {gcc} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(tmp_path / "cache"), "CC": str(wrapper)}
    found, _ = _script(_STEP, tmp_path, env)
    assert found["path"] == "fused"
    _library(tmp_path / "cache").write_bytes(b"\0" * 100)
    flag.touch()
    found, _ = _script(_STEP, tmp_path, env)
    assert found["path"] == "foreach" and len(found["warnings"]) == 1
    assert "building fused_cpu.c failed" in found["reason"] and "out of memory" in found["reason"]
    assert "adamkit: the fused CPU kernel is unavailable" in found["warnings"][0]
    assert found["p"] == pytest.approx([-0.002] * 3, rel=1e-4)  # the foreach path stepped


def test_two_processes_building_at_once_compile_once(tmp_path: Path) -> None:
    log = tmp_path / "compiles"
    wrapper = tmp_path / "logging-cc"
    gcc = shutil.which("gcc") or shutil.which("cc")
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *fused_cpu.c*) echo x >> {log}; sleep 1;; esac\nexec {gcc} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        **QUICK_BUILD,
        "ADAMKIT_CACHE_DIR": str(tmp_path / "cache"),
        "CC": str(wrapper),
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", _STEP], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert [o["path"] for o in outputs] == ["fused", "fused"]
    assert log.read_text().count("x") == 1


def test_extra_compiler_flags_are_part_of_the_key_and_bad_ones_say_why(tmp_path: Path) -> None:
    """``ADAMKIT_CFLAGS`` (a portable ``-march`` for a mixed cluster) builds a library of its
    own beside the default one; flags that cannot be split, or that the compiler refuses,
    leave the kernel unavailable with one warning that names them."""
    cache = tmp_path / "cache"
    for extra in ("-O0", "-O0 -fno-unroll-loops"):
        found, _ = _script(
            _STEP, tmp_path, {"ADAMKIT_CACHE_DIR": str(cache), "ADAMKIT_CFLAGS": extra}
        )
        assert found["path"] == "fused" and found["reason"] is None
    assert len(list(cache.glob("fused_cpu-*.so"))) == 2
    env = {"ADAMKIT_CACHE_DIR": str(cache), "ADAMKIT_CFLAGS": "-fno-such-flag"}
    found, _ = _script(_STEP, tmp_path, env)
    assert found["path"] == "foreach" and len(found["warnings"]) == 1
    assert "-fno-such-flag" in found["reason"], found["reason"]
    assert found["p"] == pytest.approx([-0.002] * 3, rel=1e-4)  # two steps, on the fallback


def test_compiler_flags_that_cannot_be_split_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAMKIT_CFLAGS", '-O1 "-DX')
    with pytest.raises(_build.KernelUnavailable, match=r"ADAMKIT_CFLAGS='-O1 \"-DX' is not a list"):
        _build.flags()
    # The numbers shared with Python are not the flags' to change.
    for extra in ("-DAK_K_RADAM=0", "-D AK_ADAM=3", "-UAK_ROW", "-O2 -DFOO"):
        monkeypatch.setenv("ADAMKIT_CFLAGS", extra)
        with pytest.raises(_build.KernelUnavailable, match="may not define or undefine macros"):
            _build.flags()
    monkeypatch.setenv("ADAMKIT_CFLAGS", "-march=x86-64-v2 -O2")
    assert _build.flags()[-2:] == ["-march=x86-64-v2", "-O2"]


def test_a_noexec_cache_falls_back_with_the_reason(tmp_path: Path) -> None:
    mount = tmp_path / "noexec"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=32m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a noexec tmpfs here")
    try:
        found, _ = _script(_STEP, tmp_path, {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(mount)})
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    assert found["path"] == "foreach" and len(found["warnings"]) == 1
    assert "cannot be loaded" in found["reason"] and "failed to map segment" in found["reason"]
    assert "set ADAMKIT_CACHE_DIR" in found["reason"]


@pytest.mark.parametrize("setting", [".", ""])
def test_a_relative_or_empty_cache_setting_is_resolved_once(tmp_path: Path, setting: str) -> None:
    body = """
        import json, os, torch, adamkit
        from adamkit.kernels import _build
        p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
        opt = adamkit.Adam([p]); opt.step()
        os.chdir("/")
        opt.step()
        print(json.dumps({"path": opt.execution_path(), "dir": str(_build.cache_dir())}))
    """
    work = tmp_path / "work"
    work.mkdir()
    env = {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": setting, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    found, _ = _script(body, work, env)
    assert found["path"] == "fused"
    expected = work if setting == "." else tmp_path / "xdg" / "adamkit"
    assert list(expected.glob("fused_cpu-*.so"))


def test_small_thread_stacks_are_enough_for_low_precision_state(tmp_path: Path) -> None:
    """``OMP_STACKSIZE=16K`` segfaulted with bf16/8-bit state (20 KiB of tiles on each
    thread's stack); the kernel now keeps its tiles on the heap and starts its own threads.

    The step also runs on the smallest thread stack Python allows (32 KiB), where the caller's
    share of the kernel runs: whatever torch's own optimizer survives there, adamkit must too.
    Only the steps run on it (creating a large tensor on a new thread takes more than 56 KiB of
    torch's own stack on one machine and more than 64 KiB on another); torch steps first, and
    if torch itself dies there, there is nothing of ours to judge."""
    body = """
        import json, threading, torch, adamkit
        torch.set_num_threads(2)
        def make(factory):
            p = torch.zeros(1_000_000, requires_grad=True); p.grad = torch.ones_like(p)
            opt = factory([p]); opt.step()
            return p, opt
        references = [make(lambda ps, f=f: torch.optim.AdamW(ps, fused=f)) for f in (False, True)]
        ours = [
            make(lambda ps, s=s: adamkit.AdamW(ps, state_precision=s))
            for s in ("bf16", "8bit")
        ]
        out = []
        def run():
            for _, opt in references:
                opt.step()
            print("torch stepped", flush=True)
            for p, opt in ours:
                opt.step(); opt.step()
                out.append([opt.execution_path(), p[0].item()])
        threading.stack_size(32 * 1024)
        t = threading.Thread(target=run); t.start(); t.join()
        print(json.dumps(out))
    """
    result = run([sys.executable, "-c", textwrap.dedent(body)], tmp_path, {"OMP_STACKSIZE": "16K"})
    if result.returncode != 0 and "torch stepped" not in result.stdout:
        pytest.skip(f"torch.optim itself dies on a 32 KiB stack here (rc {result.returncode})")
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert [path for path, _ in found] == ["fused", "fused"]
    assert all(value < 0 for _, value in found)


def test_the_kernel_s_worker_threads_survive_fork_and_concurrent_steps(tmp_path: Path) -> None:
    """The kernel's workers are started once and parked between calls. A process forked after
    they started (a DataLoader worker) has none of them, and must still step; steps made at
    once from several Python threads (ctypes releases the GIL) share the pool safely. Every
    result equals the single-threaded one, bit for bit.

    torch's own intra-op threads (OpenMP) hang in a forked child once the parent has used
    them, with or without adamkit; so torch's ops run on one thread here and only the
    kernel's steps on two (the kernel takes its thread count from torch.get_num_threads())."""
    body = """
        import json, os, threading, torch, adamkit

        def trained(kernel_threads, steps):
            torch.set_num_threads(1)
            seeded = torch.Generator().manual_seed(0)  # one per thread: the global one is shared
            p = torch.randn(1_000_000, generator=seeded, requires_grad=True)
            opt = adamkit.AdamW([p], lr=1e-2)
            for step in range(steps):
                p.grad = torch.full_like(p, 1.0 + step)
                if step:  # the first step allocates the state with torch's ops
                    torch.set_num_threads(kernel_threads)
                opt.step()
                torch.set_num_threads(1)
            assert opt.execution_path() == "fused"
            return p.detach()

        alone = {steps: trained(1, steps) for steps in (3, 20)}
        same = lambda p, steps: bool(torch.equal(p, alone[steps]))
        out = {"pooled": same(trained(2, 3), 3)}
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(write, b"1" if same(trained(2, 3), 3) else b"0")
            os._exit(0)
        os.waitpid(child, 0)
        out["forked"] = os.read(read, 1) == b"1"
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(same(trained(2, 20), 20)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["concurrent"] = results
        print(json.dumps(out))
    """
    found, _ = _script(body, tmp_path)
    assert found == {"pooled": True, "forked": True, "concurrent": [True] * 4}


@pytest.mark.parametrize(
    ("cc", "words"),
    [
        ("false", "exited with status 1"),
        ("no-such-compiler", "CC='no-such-compiler' is not a program on PATH"),
    ],
)
def test_a_broken_compiler_says_what_failed(tmp_path: Path, cc: str, words: str) -> None:
    found, _ = _script(
        _STEP, tmp_path, {**QUICK_BUILD, "ADAMKIT_CACHE_DIR": str(tmp_path / "c"), "CC": cc}
    )
    assert found["path"] == "foreach" and words in found["reason"], found
    assert len(found["warnings"]) == 1


# --------------------------------------------------------- 18. fused=True on half precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_half_precision_parameters_match_torch_fused(
    name: str, dtype: torch.dtype, amsgrad: bool
) -> None:
    """torch's fused CPU Adam/AdamW take bf16/fp16 parameters (fp32 math, each result
    rounded to nearest); ``fused=True`` now does too, within one rounding of torch's."""
    torch.manual_seed(0)
    ours_p = [
        torch.randn(5000, dtype=dtype, requires_grad=True),
        torch.randn(7, 3, dtype=dtype, requires_grad=True),
    ]
    torch_p = [p.detach().clone().requires_grad_() for p in ours_p]
    kw = {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": amsgrad}
    ours = getattr(adamkit, name)(ours_p, fused=True, **kw)
    theirs = getattr(torch.optim, name)(torch_p, fused=True, **kw)
    for _ in range(10):
        for p, q in zip(ours_p, torch_p, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for p, q in zip(ours_p, torch_p, strict=True):
            ulp = torch.finfo(dtype).eps * q.float().abs().clamp(min=torch.finfo(dtype).tiny)
            assert ((p.float() - q.float()).abs() <= 2 * ulp).all()
    assert ours.execution_path() == "fused"
    for state, twin in zip(ours.state.values(), theirs.state.values(), strict=True):
        assert state["exp_avg"].dtype == dtype
        torch.testing.assert_close(
            state["exp_avg_sq"].float(), twin["exp_avg_sq"].float(), rtol=2e-2, atol=1e-6
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["RAdam", "NAdam", "Adamax"])
def test_fused_half_precision_parameters_step_in_fp32_and_round_once(
    name: str, dtype: torch.dtype
) -> None:
    """RAdam, NAdam and Adamax have no torch fused kernel: each fused step must equal the
    same step taken in fp32 on the upcast tensors (adamkit's for-loop), rounded once."""
    torch.manual_seed(0)
    p = torch.randn(3000, dtype=dtype, requires_grad=True)
    opt = getattr(adamkit, name)([p], lr=1e-2, fused=True)
    for _ in range(8):
        p.grad = torch.randn_like(p)
        wide = p.detach().float().requires_grad_()
        wide.grad = p.grad.float()
        twin = getattr(adamkit, name)([wide], lr=1e-2, foreach=False)
        if opt.state[p]:
            twin.state[wide] = {
                k: (v.float() if v.dim() else v.clone()) for k, v in opt.state[p].items()
            }
        opt.step()
        twin.step()
        expected = wide.detach().to(dtype)
        ulp = torch.finfo(dtype).eps * expected.float().abs().clamp(min=torch.finfo(dtype).tiny)
        assert ((p.float() - expected.float()).abs() <= ulp).all()
        eps = torch.finfo(dtype).eps
        for key, value in twin.state[wide].items():
            if value.dim():  # one rounding apart (torch's lerp uses FMA, the kernel does not)
                scale = eps * value.abs().max().item()
                ours = opt.state[p][key].float()
                torch.testing.assert_close(ours, value.to(dtype).float(), rtol=eps, atol=scale)


def test_fp16_rounding_matches_torch_bit_for_bit() -> None:
    """The kernel's own float <-> half conversions (no compiler intrinsics) against torch's,
    over every class of fp32 value: normals, subnormals, ties, overflow, inf, NaN."""
    import ctypes

    torch.manual_seed(0)
    values = torch.cat(
        [
            torch.randn(20000) * 10.0 ** torch.randint(-9, 6, (20000,)).float(),
            torch.tensor(
                [65504.0, 65519.99, 65520.0, 1e9, -1e9, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8]
            ),
            torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan")]),
            (torch.arange(2**10, dtype=torch.float32) + 0.5) * 2.0**-24,  # ties among subnormals
            (torch.arange(2**10, dtype=torch.float32) + 1024.5) * 2.0**-10,  # ties among normals
        ]
    )
    library = _build.fused_library()
    assert library is not None
    halves = torch.empty(values.numel(), dtype=torch.float16)
    back = torch.empty(values.numel())
    pointer = ctypes.c_void_p
    library.adamkit_round_f16.argtypes = [pointer, ctypes.c_int64, pointer]
    library.adamkit_f16_values.argtypes = [pointer, ctypes.c_int64, pointer]
    library.adamkit_round_f16(values.data_ptr(), values.numel(), halves.data_ptr())
    library.adamkit_f16_values(halves.data_ptr(), values.numel(), back.data_ptr())
    expected = values.to(torch.float16)
    nan = expected.isnan()
    assert torch.equal(halves.view(torch.int16)[~nan], expected.view(torch.int16)[~nan])
    assert halves[nan].isnan().all()
    assert torch.equal(back[~nan], expected.float()[~nan]) and back[nan].isnan().all()
