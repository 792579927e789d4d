"""Time one optimizer step of adamkit against torch.optim on the CPU, and against a C ceiling.

What it measures
----------------
* **Step time.** For each case (fp32 CPU parameters whose random gradients are set once and
  kept between steps) and each algorithm (Adam, AdamW, AMSGrad, RAdam, NAdam, Adamax), every
  implementation -- adamkit fused (``fused=True``), adamkit foreach (``foreach=True``), torch
  for-loop (``foreach=False``), torch foreach (``foreach=True``), torch fused (``fused=True``,
  Adam/AdamW/AMSGrad only) -- and the C ceiling below own a copy of the parameters, gradients
  and optimizer. Each takes 3 warm-up steps (state created), then a few calibration steps that
  choose K, the number of steps that lasts about 0.2 s (at least 1; RAdam is then past its
  rectification switch at step 6). Then, ``--reps`` times, the implementations take turns,
  starting one further along each rep, each timing K steps with ``time.perf_counter``. The
  table reports the median per-step time over the reps, and ratios from that same run: the
  speedup of each implementation over torch fused where torch has it, else over torch foreach,
  and of adamkit fused over torch's for-loop.
* **Bandwidth.** ``benchmarks/ceiling.c`` is an in-place Adam-shaped loop over the same tensors
  (reads p, g, m, v; writes p, m, v: 28 bytes per element), compiled at run time with gcc and
  OpenMP (``torch.get_num_threads()`` threads) and called through ctypes. Every
  implementation's GB/s is ``bytes per element * numel / step time``, with 28 bytes per element
  (36 for AMSGrad, which also reads and writes ``max_exp_avg_sq``), and is also given as a
  fraction of the ceiling's GB/s measured in the same interleaved run.
* **First steps in a fresh process.** Per algorithm, a subprocess imports torch and adamkit
  (timed), builds case (c)-like parameters, constructs the optimizer with default settings and
  times its first and second ``step()``: once with ``ADAMKIT_CACHE_DIR`` pointing at a new empty
  directory (cold kernel cache), once reusing it (warm).
* **Peak extra memory of step().** Per implementation, a subprocess builds case (b), takes two
  steps (state allocated), resets the peak RSS (``5`` to ``/proc/self/clear_refs``), reads
  VmRSS, takes one step and reports VmHWM minus that VmRSS.

An implementation that cannot run here (adamkit's ``fused=True`` without a C compiler; torch
has no fused RAdam, NAdam or Adamax) is left out of the tables and the reason is printed.
``--quick`` shrinks every size, times about 5 ms per sample
and runs the fresh-process sections for the first algorithm only; it checks the harness, its
numbers mean nothing. Progress goes to stderr, tables (markdown) to stdout, and ``--out FILE``
replaces this benchmark's section of FILE (between ``<!-- bench_step:begin -->`` and
``<!-- bench_step:end -->``), creating FILE if needed and keeping the rest of it.

Usage: ``python benchmarks/bench_step.py [--quick] [--reps N] [--out BENCHMARKS.md]
[--algorithms Adam,RAdam,...] [--cases a,b,c]``
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import adamkit

HERE = Path(__file__).resolve().parent
CEILING_SOURCE = HERE / "ceiling.c"
CEILING_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]

WARMUP_STEPS = 3
MIN_CALIBRATION_STEPS = 3
TARGET_SECONDS = 0.2
QUICK_TARGET_SECONDS = 0.005
DEFAULT_REPS = 7
QUICK_REPS = 3
ADAM_BYTES = 28  # read p, g, m, v; write p, m, v (fp32)
AMSGRAD_BYTES = 36  # ... and read + write max_exp_avg_sq

AK_FUSED = "adamkit fused"
AK_FOREACH = "adamkit foreach"
TORCH_FORLOOP = "torch for-loop"
TORCH_FOREACH = "torch foreach"
TORCH_FUSED = "torch fused"
CEILING = "C ceiling"
IMPLEMENTATIONS = (AK_FUSED, AK_FOREACH, TORCH_FORLOOP, TORCH_FOREACH, TORCH_FUSED)
#: Constructor flags of each optimizer implementation: (library, execution flags).
IMPL_FLAGS: dict[str, tuple[str, dict[str, bool]]] = {
    AK_FUSED: ("adamkit", {"fused": True}),
    AK_FOREACH: ("adamkit", {"foreach": True}),
    TORCH_FORLOOP: ("torch", {"foreach": False}),
    TORCH_FOREACH: ("torch", {"foreach": True}),
    TORCH_FUSED: ("torch", {"fused": True}),
}


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the results)."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    key: str
    title: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(_numel(s) for s in self.shapes)

    def label(self) -> str:
        return f"({self.key}) {self.title}"


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _transformer_like(matrices: int, rows: int, cols: int, vectors: int) -> Case:
    shapes = ((rows, cols),) * matrices + ((rows,),) * vectors
    title = f"{matrices + vectors} tensors: {matrices}x({rows}, {cols}) + {vectors}x({rows},)"
    return Case("b", title, shapes)


def make_cases(quick: bool) -> dict[str, Case]:
    """The three cases of the brief; ``quick`` shrinks every one of them."""
    if quick:
        cases = [
            Case("a", "1 tensor of 100k", ((100_000,),)),
            _transformer_like(3, 64, 256, 20),
            Case("c", "200 tensors of 100", ((100,),) * 200),
        ]
    else:
        cases = [
            Case("a", "1 tensor of 10M", ((10_000_000,),)),
            _transformer_like(7, 1024, 4096, 293),
            Case("c", "2000 tensors of 1000", ((1000,),) * 2000),
        ]
    return {c.key: c for c in cases}


def make_params(case: Case, seed: int = 0) -> list[torch.Tensor]:
    """Fresh fp32 parameters with random ``.grad`` (the same values for every call)."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in case.shapes:
        p = torch.randn(shape, generator=gen)
        p.grad = torch.randn(shape, generator=gen)
        params.append(p)
    return params


# -------------------------------------------------------------------------------- algorithms
@dataclass(frozen=True)
class Algorithm:
    name: str
    class_name: str  # the same name in adamkit and torch.optim
    kwargs: dict[str, Any]
    bytes_per_element: int
    torch_has_fused: bool

    def constructor(self, library: str) -> Callable[..., torch.optim.Optimizer]:
        module = adamkit if library == "adamkit" else torch.optim
        ctor: Callable[..., torch.optim.Optimizer] = getattr(module, self.class_name)
        return ctor


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("Adam", "Adam", {"lr": 1e-3}, ADAM_BYTES, True),
        Algorithm("AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 0.01}, ADAM_BYTES, True),
        Algorithm("AMSGrad", "Adam", {"lr": 1e-3, "amsgrad": True}, AMSGRAD_BYTES, True),
        Algorithm("RAdam", "RAdam", {"lr": 1e-3}, ADAM_BYTES, False),
        Algorithm("NAdam", "NAdam", {"lr": 1e-3}, ADAM_BYTES, False),
        Algorithm("Adamax", "Adamax", {"lr": 1e-3}, ADAM_BYTES, False),
    )
}


def baseline_of(alg: Algorithm) -> str:
    """The torch implementation the speedups are relative to."""
    return TORCH_FUSED if alg.torch_has_fused else TORCH_FOREACH


class Unavailable(Exception):
    """This implementation cannot run here; the message says why."""


def make_optimizer(alg: Algorithm, impl: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """Construct ``impl`` of ``alg`` over ``params``, or raise :class:`Unavailable`."""
    library, flags = IMPL_FLAGS[impl]
    if impl == TORCH_FUSED and not alg.torch_has_fused:
        raise Unavailable(f"torch.optim.{alg.class_name} has no fused implementation")
    try:
        return alg.constructor(library)(params, **alg.kwargs, **flags)
    except Exception as e:  # NotImplementedError until adamkit's fused path lands
        raise Unavailable(f"{type(e).__name__} in the constructor: {e}") from e


def execution_path(opt: torch.optim.Optimizer) -> str | None:
    """adamkit's name for the path ``step()`` takes (None for torch optimizers)."""
    method = getattr(opt, "execution_path", None)
    return str(method()) if callable(method) else None


# --------------------------------------------------------------------------------- ceiling
class CeilingStep:
    """One call of ``ceiling_step`` over fixed tensors (which it keeps alive)."""

    def __init__(self, lib: ctypes.CDLL, tensors: dict[str, list[torch.Tensor]]) -> None:
        self.tensors = tensors
        count = len(tensors["p"])
        pointers = ctypes.c_void_p * count
        self.args = (
            ctypes.c_int64(count),
            *(pointers(*(t.data_ptr() for t in tensors[k])) for k in ("p", "g", "m", "v")),
            (ctypes.c_int64 * count)(*(t.numel() for t in tensors["p"])),
            ctypes.c_int(torch.get_num_threads()),
        )
        self.fn = lib.ceiling_step

    def __call__(self) -> None:
        self.fn(*self.args)


@dataclass
class CeilingLibrary:
    """The compiled ``ceiling.c`` in its temporary directory."""

    lib: ctypes.CDLL
    directory: tempfile.TemporaryDirectory[str]

    def bind(self, tensors: dict[str, list[torch.Tensor]]) -> CeilingStep:
        """A no-argument step over ``tensors["p" | "g" | "m" | "v"]``."""
        return CeilingStep(self.lib, tensors)


def build_ceiling() -> tuple[CeilingLibrary | None, str]:
    """Compile ``ceiling.c`` into a temporary directory; (library, "") or (None, why not)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc not found on PATH"
    directory = tempfile.TemporaryDirectory(prefix="bench_step_")
    target = Path(directory.name) / "ceiling.so"
    cmd = [gcc, *CEILING_FLAGS, "-o", str(target), str(CEILING_SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        directory.cleanup()
        return None, f"`{shlex.join(cmd)}` failed: {done.stderr.strip()[:500]}"
    lib = ctypes.CDLL(str(target))
    lib.ceiling_step.restype = None
    # ceiling_step(count, p**, g**, m**, v**, numel*, nthreads)
    lib.ceiling_step.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 5, ctypes.c_int]
    return CeilingLibrary(lib, directory), ""


# ---------------------------------------------------------------------------------- timing
@dataclass
class Contender:
    """One implementation with its own tensors, timed in turn with the others."""

    name: str
    step: Callable[[], None]
    steps_per_sample: int = 1
    samples: list[float] = field(default_factory=list)  # seconds per step, one per rep

    def time_steps(self, k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            self.step()
        return time.perf_counter() - start

    def calibrate(self, target: float) -> None:
        """Choose K so that K steps last about ``target`` seconds (at least 1 step)."""
        n = MIN_CALIBRATION_STEPS
        elapsed = self.time_steps(n)
        while elapsed < target / 4 and n < 1_000_000:
            n *= 2
            elapsed = self.time_steps(n)
        self.steps_per_sample = max(1, round(target * n / elapsed))

    def median(self) -> float:
        return statistics.median(self.samples)


def make_contenders(
    case: Case, alg: Algorithm, impls: Sequence[str], ceiling: CeilingLibrary | None
) -> tuple[list[Contender], dict[str, str]]:
    """Each implementation with its own params, grads and optimizer; and why some are missing."""
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    for impl in impls:
        params = make_params(case)
        try:
            opt = make_optimizer(alg, impl, params)
        except Unavailable as e:
            skipped[impl] = str(e)
            continue
        path = execution_path(opt)
        if impl == AK_FUSED and path not in (None, "fused"):
            skipped[impl] = f"fused=True runs the {path!r} path, not a fused kernel"
            continue
        contenders.append(Contender(impl, opt.step))
    if ceiling is not None:
        params = make_params(case)
        tensors = {
            "p": params,
            "g": [p.grad for p in params if p.grad is not None],
            "m": [torch.zeros_like(p) for p in params],
            "v": [torch.zeros_like(p) for p in params],
        }
        contenders.append(Contender(CEILING, ceiling.bind(tensors)))
    return contenders, skipped


def warm_up(contenders: list[Contender], skipped: dict[str, str]) -> list[Contender]:
    """Take the warm-up steps; a contender whose step() raises is dropped, with the reason."""
    ready = []
    for c in contenders:
        try:
            for _ in range(WARMUP_STEPS):
                c.step()
        except Exception as e:  # one broken implementation should not end a long run
            skipped[c.name] = f"{type(e).__name__} in step(): {e}"
            continue
        ready.append(c)
    return ready


def run_interleaved(contenders: list[Contender], reps: int, target: float, label: str) -> None:
    """Calibrate, then time each contender once per rep, rotating who goes first."""
    if not contenders:
        return
    for c in contenders:
        c.calibrate(target)
    log(f"  {label}: K = " + ", ".join(f"{c.name} {c.steps_per_sample}" for c in contenders))
    for rep in range(reps):
        log(f"  {label}: rep {rep + 1}/{reps}")
        start = rep % len(contenders)
        for c in contenders[start:] + contenders[:start]:
            c.samples.append(c.time_steps(c.steps_per_sample) / c.steps_per_sample)


@dataclass
class StepResults:
    """Median seconds per step by (case key, algorithm, implementation), and skip reasons."""

    seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)
    #: (algorithm, implementation) -> reason -> the case keys it was skipped for
    skipped: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)


def measure_steps(
    cases: Iterable[Case],
    algs: Iterable[Algorithm],
    reps: int,
    target: float,
    ceiling: CeilingLibrary | None,
) -> StepResults:
    results = StepResults()
    for case in cases:
        for alg in algs:
            label = f"case {case.label()} | {alg.name}"
            log(f"{label}: building, warming up, calibrating")
            contenders, skipped = make_contenders(case, alg, IMPLEMENTATIONS, ceiling)
            contenders = warm_up(contenders, skipped)
            for impl, why in skipped.items():
                log(f"  skipping {impl} {alg.name}: {why}")
                reasons = results.skipped.setdefault((alg.name, impl), {})
                reasons.setdefault(why, []).append(case.key)
            run_interleaved(contenders, reps, target, label)
            for c in contenders:
                results.seconds[(case.key, alg.name, c.name)] = c.median()
            del contenders
            gc.collect()
    return results


# ------------------------------------------------------------------------ fresh processes
WARMUP_CHILD = r"""
import json, sys, time
clock = [time.perf_counter()]
import torch
clock.append(time.perf_counter())
import adamkit
clock.append(time.perf_counter())
spec = json.loads(sys.argv[1])
gen = torch.Generator().manual_seed(0)
params = []
for _ in range(spec["count"]):
    p = torch.randn(spec["size"], generator=gen)
    p.grad = torch.randn(spec["size"], generator=gen)
    params.append(p)
clock.append(time.perf_counter())
opt = getattr(adamkit, spec["class_name"])(params, **spec["kwargs"])
clock.append(time.perf_counter())
opt.step()
clock.append(time.perf_counter())
opt.step()
clock.append(time.perf_counter())
d = [b - a for a, b in zip(clock, clock[1:])]
path = opt.execution_path() if hasattr(opt, "execution_path") else "?"
print(json.dumps({"import_torch": d[0], "import_adamkit": d[1], "construct": d[3],
                  "step1": d[4], "step2": d[5], "path": path}))
"""

MEMORY_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import bench_step
bench_step.memory_child(sys.argv[2], sys.argv[3], sys.argv[4] == "quick")
"""


def run_child(code: str, args: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -c code args`` and parse the JSON on the last line of its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure_first_steps(
    algs: Iterable[Algorithm], case: Case
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per algorithm: import and first/second step times with a cold, then a warm cache."""
    sizes = {_numel(s) for s in case.shapes}
    assert len(sizes) == 1, "the first-step case has tensors of one size"
    spec_base = {"count": len(case.shapes), "size": sizes.pop()}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for alg in algs:
        with tempfile.TemporaryDirectory(prefix="adamkit_cache_") as cache:
            env = {**os.environ, "ADAMKIT_CACHE_DIR": cache}
            spec = {**spec_base, "class_name": alg.class_name, "kwargs": alg.kwargs}
            for cache_state in ("cold", "warm"):
                log(f"first steps: {alg.name}, {cache_state} kernel cache")
                results[(alg.name, cache_state)] = run_child(WARMUP_CHILD, [json.dumps(spec)], env)
    return results


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # "VmHWM:   123456 kB"
    raise KeyError(key)


def memory_child(alg_name: str, impl: str, quick: bool) -> None:
    """(In a fresh process.) Print, as JSON, the peak RSS growth of one step() on case (b)."""
    alg = ALGORITHMS[alg_name]
    params = make_params(make_cases(quick)["b"])
    try:
        opt = make_optimizer(alg, impl, params)
        for _ in range(2):
            opt.step()
    except Unavailable as e:
        print(json.dumps({"skipped": str(e)}))
        return
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__} in step(): {e}"}))
        return
    path = execution_path(opt)
    if impl == AK_FUSED and path not in (None, "fused"):
        print(json.dumps({"skipped": f"fused=True runs the {path!r} path"}))
        return
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:
        print(json.dumps({"skipped": f"cannot reset the peak RSS: {e}"}))
        return
    before = _proc_status_kib("VmRSS")
    opt.step()
    peak = _proc_status_kib("VmHWM")
    print(json.dumps({"extra_kib": peak - before, "rss_kib": before}))


def peak_rss_resettable() -> str:
    """Why ``/proc/self/clear_refs`` cannot reset VmHWM here; empty when it can."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
    except (OSError, KeyError) as e:
        return f"cannot reset the peak RSS through /proc/self/clear_refs ({e})"
    return ""


def measure_memory(algs: Iterable[Algorithm], quick: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (algorithm, implementation): the child's JSON (extra_kib, or skipped/error)."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    mode = "quick" if quick else "full"
    for alg in algs:
        for impl in IMPLEMENTATIONS:
            if impl == TORCH_FUSED and not alg.torch_has_fused:
                continue
            log(f"peak memory: {impl} {alg.name}")
            results[(alg.name, impl)] = run_child(MEMORY_CHILD, [str(HERE), alg.name, impl, mode])
    return results


# ---------------------------------------------------------------------------------- report
def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table, padded so it also reads well as plain text."""
    body = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def busy_warning() -> str:
    """A warning when other processes were using the CPU as the run started, else ""."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load < 0.25 * cores:
        return ""
    return (
        f"**Warning:** the 1-minute load average was {load:.2f} on {cores} cores when this "
        "run started: other processes were using the CPU, so these times are not reliable "
        "(a parallel region waits for a time slice whenever a core is taken)."
    )


def machine_description() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or "unknown CPU"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [
        f for f in ("sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16") if f in flags
    ]
    return [
        f"CPU: {cpu}, {os.cpu_count()} logical cores, torch.get_num_threads() = "
        f"{torch.get_num_threads()}; vector flags: {', '.join(vector) or 'unknown'}",
        f"torch {torch.__version__}, adamkit {adamkit.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "adamkit's C kernel built with ADAMKIT_CFLAGS="
        + (repr(os.environ["ADAMKIT_CFLAGS"]) if os.environ.get("ADAMKIT_CFLAGS") else "(unset)")
        + f", by {_build_flags()}",
    ]


def _build_flags() -> str:
    from adamkit.kernels import _build

    return " ".join(f for f in _build.flags() if not f.startswith("-DAK_"))


@dataclass
class Report:
    cases: list[Case]
    algs: list[Algorithm]
    reps: int
    target: float
    steps: StepResults
    ceiling_note: str
    first_steps: dict[tuple[str, str], dict[str, Any]] | None
    first_steps_case: Case
    memory: dict[tuple[str, str], dict[str, Any]] | None
    memory_note: str
    memory_case: Case
    busy: str  # busy_warning() at the start of the run
    fresh_algs: list[Algorithm]  # the algorithms measured in fresh processes

    def _rows(self) -> Iterable[tuple[Case, Algorithm]]:
        for case in self.cases:
            for alg in self.algs:
                yield case, alg

    def _t(self, case: Case, alg: Algorithm, impl: str) -> float | None:
        return self.steps.seconds.get((case.key, alg.name, impl))

    def _gbs(self, case: Case, alg: Algorithm, impl: str) -> float | None:
        t = self._t(case, alg, impl)
        per_element = ADAM_BYTES if impl == CEILING else alg.bytes_per_element
        return None if t is None else per_element * case.numel / t / 1e9

    def ms_table(self) -> str:
        header = ["case", "algorithm", *IMPLEMENTATIONS, CEILING]
        rows = []
        for case, alg in self._rows():
            cells = [fmt(_ms(self._t(case, alg, i)), ".3f") for i in (*IMPLEMENTATIONS, CEILING)]
            rows.append([f"({case.key})", alg.name, *cells])
        return table(header, rows)

    def ratio_table(self) -> str:
        header = ["case", "algorithm", "baseline", *IMPLEMENTATIONS, "ak fused vs for-loop"]
        rows = []
        for case, alg in self._rows():
            base = self._t(case, alg, baseline_of(alg))
            cells = [fmt(_ratio(base, self._t(case, alg, i)), ".2f", "x") for i in IMPLEMENTATIONS]
            forloop = _ratio(self._t(case, alg, TORCH_FORLOOP), self._t(case, alg, AK_FUSED))
            rows.append(
                [f"({case.key})", alg.name, baseline_of(alg), *cells, fmt(forloop, ".2f", "x")]
            )
        return table(header, rows)

    def bandwidth_table(self) -> str:
        header = ["case", "algorithm", "bytes/elem", *IMPLEMENTATIONS, CEILING]
        rows = []
        for case, alg in self._rows():
            ceiling = self._gbs(case, alg, CEILING)
            cells = []
            for impl in (*IMPLEMENTATIONS, CEILING):
                gbs = self._gbs(case, alg, impl)
                share = _ratio(gbs, ceiling)
                cells.append(fmt(gbs, ".3g") + ("" if share is None else f" ({100 * share:.0f}%)"))
            rows.append([f"({case.key})", alg.name, str(alg.bytes_per_element), *cells])
        return table(header, rows)

    def first_steps_table(self) -> str:
        assert self.first_steps is not None
        header = ["algorithm", "kernel cache", "path", "import torch", "import adamkit"]
        header += ["construct", "step 1", "step 2"]
        rows = []
        for (name, cache_state), r in self.first_steps.items():
            if "error" in r:
                rows.append([name, cache_state, f"error: {r['error']}", *["—"] * 5])
                continue
            times = [r["import_torch"], r["import_adamkit"], r["construct"], r["step1"]]
            cells = [fmt(1e3 * t, ".1f", " ms") for t in [*times, r["step2"]]]
            rows.append([name, cache_state, str(r["path"]), *cells])
        return table(header, rows)

    def memory_table(self) -> str:
        assert self.memory is not None
        param_mib = self.memory_case.numel * 4 / 2**20
        header = ["algorithm", *(i for i in IMPLEMENTATIONS)]
        rows = []
        for alg in self.fresh_algs:
            cells = []
            for impl in IMPLEMENTATIONS:
                r = self.memory.get((alg.name, impl))
                if r is None or "skipped" in r:
                    cells.append("—")
                elif "error" in r:
                    cells.append("error")
                else:
                    mib = r["extra_kib"] / 1024
                    cells.append(f"{mib:.1f} MiB ({mib / param_mib:.2f}x)")
            rows.append([alg.name, *cells])
        return table(header, rows)

    def skip_lines(self) -> list[str]:
        lines = [
            f"- {impl} {alg}, case{'s' * (len(keys) > 1)} {','.join(keys)}: {why}"
            for (alg, impl), reasons in self.steps.skipped.items()
            for why, keys in reasons.items()
            if not why.startswith("torch.optim.")  # torch lacking fused RAdam etc. is expected
        ]
        for (alg, impl), r in (self.memory or {}).items():
            if "error" in r:
                lines.append(f"- peak memory of {impl} {alg} failed: {r['error']}")
        for (alg, cache_state), r in (self.first_steps or {}).items():
            if "error" in r:
                lines.append(f"- first steps of {alg} ({cache_state} cache) failed: {r['error']}")
        return lines

    def render(self, command: str) -> str:
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        parts = [
            "## Optimizer step benchmark (`benchmarks/bench_step.py`)",
            f"Command: `{command}`  \nDate: {date}  \n" + "  \n".join(machine_description()),
            *([self.busy] if self.busy else []),
            "Cases (fp32, CPU): "
            + "; ".join(f"{c.label()}, {c.numel:,} elements" for c in self.cases)
            + f". Median of {self.reps} interleaved reps, each about {self.target:g} s of steps.",
            "### Milliseconds per step",
            self.ms_table(),
            "### Speedup over torch (baseline time / time; > 1 is faster)",
            "Baseline: torch fused where torch has it, else torch foreach. Last column: torch "
            "for-loop time / adamkit fused time.",
            self.ratio_table(),
            "### Achieved bandwidth: GB/s (% of the C ceiling)",
            "GB/s = bytes per element x elements / step time. The ceiling moves 28 bytes per "
            "element with an Adam-shaped loop (`benchmarks/ceiling.c`, "
            f"{torch.get_num_threads()} OpenMP threads)."
            + (f" {self.ceiling_note}" if self.ceiling_note else ""),
            self.bandwidth_table(),
        ]
        if self.first_steps is not None:
            parts += [
                "### First steps in a fresh process (default settings, fused=None)",
                f"Parameters: {self.first_steps_case.label()}. Cold: ADAMKIT_CACHE_DIR is a new "
                "empty directory; warm: the same directory again. `path` is "
                "`opt.execution_path()`. `construct` includes torch's lazy import of "
                "torch._dynamo on the first Optimizer of a process (torch.optim pays it too).",
                self.first_steps_table(),
            ]
        if self.memory is not None:
            parts += [
                "### Peak extra memory of one step() (VmHWM - VmRSS before the step)",
                f"Case {self.memory_case.label()}; in brackets, as a multiple of the parameters' "
                f"size ({self.memory_case.numel * 4 / 2**20:.1f} MiB). One fresh process per "
                "cell, state already allocated.",
                self.memory_table(),
            ]
        elif self.memory_note:
            parts += ["### Peak extra memory of one step()", f"Skipped: {self.memory_note}"]
        skips = self.skip_lines()
        if skips:
            parts += ["### Not measured", "\n".join(skips)]
        return "\n\n".join(parts) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def write_section(path: Path, body: str, name: str = "bench_step") -> None:
    """Replace the section of ``path`` marked ``<!-- {name}:begin/end -->`` (appending it if
    absent), keeping the rest of the file."""
    begin_marker, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin_marker}\n{body.rstrip()}\n{end_marker}"
    text = path.read_text() if path.exists() else ""
    start, end = text.find(begin_marker), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(end_marker) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text)


# ------------------------------------------------------------------------------------ main
def _pick(names: str | None, known: dict[str, Any], what: str) -> list[Any]:
    if names is None:
        return list(known.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in wanted]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few reps")
    parser.add_argument("--reps", type=int, help=f"timed reps (default {DEFAULT_REPS})")
    parser.add_argument("--out", type=Path, help="markdown file whose section to replace")
    parser.add_argument("--algorithms", help=f"comma-separated subset of {','.join(ALGORITHMS)}")
    parser.add_argument("--cases", help="comma-separated subset of a,b,c")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["bench_step.py", *argv])])
    all_cases = make_cases(args.quick)
    cases = _pick(args.cases, all_cases, "cases")
    algs = _pick(args.algorithms, ALGORITHMS, "algorithms")
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    target = QUICK_TARGET_SECONDS if args.quick else TARGET_SECONDS

    busy = busy_warning()
    if busy:
        log(busy.replace("**", ""))
    ceiling, ceiling_note = build_ceiling()
    if ceiling is None:
        ceiling_note = f"Ceiling skipped: {ceiling_note}."
        log(ceiling_note)
    steps = measure_steps(cases, algs, reps, target, ceiling)

    # One fresh process per cell costs about as long as importing torch (seconds), so --quick
    # checks these sections with the first algorithm only.
    fresh_algs = algs[:1] if args.quick else algs
    first_case = all_cases["c"]  # 2000 x 1000 (quick: 200 x 100)
    first_steps = measure_first_steps(fresh_algs, first_case)
    memory_note = peak_rss_resettable()
    memory = None if memory_note else measure_memory(fresh_algs, args.quick)
    if memory_note:
        log(f"peak memory skipped: {memory_note}")

    report = Report(
        cases=cases,
        algs=algs,
        reps=reps,
        target=target,
        steps=steps,
        ceiling_note=ceiling_note,
        first_steps=first_steps,
        first_steps_case=first_case,
        memory=memory,
        memory_note=memory_note,
        fresh_algs=fresh_algs,
        memory_case=all_cases["b"],
        busy=busy,
    )
    text = report.render(command)
    print(text)
    if args.out is not None:
        write_section(args.out, text)
        log(f"wrote the bench_step section of {args.out}")
    if ceiling is not None:
        ceiling.directory.cleanup()


if __name__ == "__main__":
    main()
