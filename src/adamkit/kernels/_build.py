"""Build ``fused_cpu.c`` once per machine and load it with :mod:`ctypes`.

Why plain C and ctypes: the kernel needs no torch headers (it sees raw pointers), so it
compiles in about a second with the system C compiler, where a torch C++ extension takes tens
of seconds and numba adds a large dependency and seconds of JIT per process. The shared library
is cached under ``$ADAMKIT_CACHE_DIR`` (default ``~/.cache/adamkit``), keyed by the source, the
flags, the compiler and the CPU, so later processes only ``dlopen`` it (milliseconds). It is
built with ``-march=native``: the key includes the CPU model so a shared home directory never
hands one machine another's build. Without a C compiler the fused path is unavailable and the
optimizers use the multi-tensor path; :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["fused_library", "unavailable_reason"]

SOURCE = Path(__file__).with_name("fused_cpu.c")
# -fno-math-errno: sqrt never sets errno here, which lets the compiler vectorise it.
# -ffp-contract=off: no fused multiply-adds (gcc's default in ISO C, not clang's), so the
# kernel rounds as torch's eager operations and as the Triton kernels (fused_triton.py) do.
FLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=c11",
]


def cache_dir() -> Path:
    if "ADAMKIT_CACHE_DIR" in os.environ:
        return Path(os.environ["ADAMKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamkit"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode()):
        key.update(part)
    key.update(str(Path(compiler).resolve().stat().st_mtime_ns).encode())
    key.update(f"{platform.machine()} {platform.system()} {_cpu_model()}".encode())
    return cache_dir() / f"fused_cpu-{key.hexdigest()[:16]}.so"


_FAILURE: list[str] = []


@cache
def fused_library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it if needed; ``None`` if it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        _FAILURE.append("no C compiler found (set CC, or install gcc)")
        return None
    path = _library_path(compiler)
    if not path.exists():
        try:
            _build(compiler, path)
        except (OSError, subprocess.SubprocessError) as error:
            _FAILURE.append(f"building {SOURCE.name} failed: {error}")
            return None
    library = ctypes.CDLL(str(path))
    pointer, f64, i32, i64 = ctypes.c_void_p, ctypes.c_double, ctypes.c_int, ctypes.c_int64
    common: list[Any] = [i32, i32, f64, f64, f64, f64, f64, f64, i64, *[pointer] * 8, i32]
    for name in ("adamkit_fused_step_f32", "adamkit_fused_step_f64"):
        function = getattr(library, name)
        function.restype = i32
        function.argtypes = common
    library.adamkit_fused_step_wide.restype = i32
    library.adamkit_fused_step_wide.argtypes = [*common, i32, *[pointer] * 5]
    library.adamkit_step_scalars.restype = None
    library.adamkit_step_scalars.argtypes = [i32, i32, f64, f64, f64, f64, i64, *[pointer] * 3]
    library.adamkit_count_steps.restype = None
    library.adamkit_count_steps.argtypes = [i64, pointer, i32, pointer]
    return library


def _build(compiler: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never see a half-written file.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        result = subprocess.run(
            [compiler, *FLAGS, "-o", str(partial), str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr.strip()[-2000:])
        os.replace(partial, path)


def unavailable_reason() -> str | None:
    """Why the fused kernel cannot be used here, or ``None`` when it can."""
    return None if fused_library() is not None else (_FAILURE[-1] if _FAILURE else "unknown")
