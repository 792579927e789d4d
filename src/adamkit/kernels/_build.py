"""Build ``fused_cpu.c`` once per machine and load it with :mod:`ctypes`, or say why not.

Why plain C and ctypes: the kernel needs no torch headers (it sees raw pointers), so it
compiles in about a second with the system C compiler, where a torch C++ extension takes tens
of seconds and numba adds a large dependency and seconds of JIT per process.

The shared library is cached under ``$ADAMKIT_CACHE_DIR`` (default ``~/.cache/adamkit``, or
``$XDG_CACHE_HOME/adamkit``), made absolute at first use. A cached library is trusted only
as far as it can be checked:

* **Keyed by what the compiler targets.** It is built with ``-march=native``, so the key hashes
  the source, the flags, the compiler's own version line and the macros it predefines for the
  build's flags on this CPU (``__AVX512F__``, ``__AVX2__``, ...): a home directory shared by
  machines with different CPUs never hands one of them another's build. Extra compiler flags
  come from ``$ADAMKIT_CFLAGS`` (e.g. ``-march=x86-64-v3`` for one build that every node of a
  mixed cluster can run), and are part of the key.
* **Verified before it is mapped.** A SHA-256 of the library is written beside it after the
  build; a file that does not match (truncated, zeroed, another library, a directory) is
  rebuilt once. After loading, a self-test step on a few elements must give the values Python
  computes; otherwise the library is not used.
* **Built by one process.** A lock file serialises concurrent builds (a second process waits,
  then loads the first one's result), and the library is written beside its final name and
  renamed, so nobody maps a half-written file.

Whatever fails (no compiler, a compiler error, a cache directory that cannot be written or is
mounted ``noexec``, a damaged library that does not rebuild) leaves the kernel unavailable:
the optimizers use the multi-tensor path, one :class:`RuntimeWarning` says why, and
:func:`unavailable_reason` returns the same text.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from array import array
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from . import _abi
from ._abi import c_defines

__all__ = ["fused_library", "unavailable_reason"]

SOURCE = Path(__file__).with_name("fused_cpu.c")
# -fno-math-errno: sqrt never sets errno here, which lets the compiler vectorise it.
# -ffp-contract=off: no fused multiply-adds (gcc's default in ISO C, not clang's), so the
# kernel rounds as torch's eager operations and as the Triton kernels (fused_triton.py) do.
# -pthread: the kernel starts its own threads, only for calls with enough work (fused_cpu.c).
FLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-pthread",
    "-shared",
    "-fPIC",
    "-std=c11",
]
_BUILD_SECONDS = 120


class KernelUnavailable(Exception):
    """Why the kernel cannot be used on this machine (the message says it to the user)."""


def flags() -> list[str]:
    """The compiler flags: :data:`FLAGS`, then ``$ADAMKIT_CFLAGS`` (later flags win).

    The extra flags may choose the target (``-march=x86-64-v3``) or the optimisation; macros
    (``-D``, ``-U``) are refused, since the kernel's numbers are the ones it shares with Python
    (``-DAK_...``, from ``_abi.py``). Flags that change
    the arithmetic (``-ffast-math``, ``-ffp-contract=fast``) change the results, which then no
    longer match torch's bit for bit; they are the setter's choice."""
    extra = os.environ.get("ADAMKIT_CFLAGS", "")
    try:
        words = shlex.split(extra)
    except ValueError as error:  # an unclosed quote
        reason = f"ADAMKIT_CFLAGS={extra!r} is not a list of flags: {error}"
        raise KernelUnavailable(reason) from None
    if any(w[:2] in ("-D", "-U") for w in words):
        raise KernelUnavailable(
            f"ADAMKIT_CFLAGS={extra!r} may not define or undefine macros (-D, -U): the "
            "kernel's numbers come from adamkit.kernels._abi"
        )
    return [*FLAGS, *c_defines(), *words]  # c_defines: the numbers shared with Python, Triton


def cache_dir() -> Path:
    """Where built kernels are kept (absolute: a relative or empty setting is resolved once)."""
    configured = os.environ.get("ADAMKIT_CACHE_DIR", "")
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base).expanduser() / "adamkit").absolute()


def _compiler() -> list[str]:
    """The C compiler's command (``$CC``, which may carry words such as ``ccache gcc``)."""
    configured = os.environ.get("CC", "").strip()
    if configured:
        words = shlex.split(configured)
        found = shutil.which(words[0])
        if found is None:
            raise KernelUnavailable(f"CC={configured!r} is not a program on PATH")
        return [found, *words[1:]]
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise KernelUnavailable("no C compiler found (set CC, or install gcc)")
    return [found]


def _ask(compiler: list[str], *args: str) -> str:
    """What the compiler prints for ``args`` (its version, its predefined macros)."""
    try:
        result = subprocess.run(
            [*compiler, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelUnavailable(f"running the C compiler {compiler[0]} failed: {error}") from error
    if result.returncode != 0:
        raise KernelUnavailable(_failure(compiler, args, result))
    return result.stdout


def _failure(compiler: list[str], args: tuple[str, ...], result: Any) -> str:
    """The compiler's exit status and its error output (else the first line it printed)."""
    said = (result.stderr or "").strip()
    if not said and (result.stdout or "").strip():
        said = result.stdout.strip().splitlines()[0]
    command = " ".join([compiler[0], *compiler[1:], *args[:2]])
    what = f"and printed:\n{said[-2000:]}" if said else "and printed nothing"
    return f"the C compiler ({command} ...) exited with status {result.returncode} {what}"


def _library_path(compiler: list[str]) -> Path:
    """The cache file for this source, these flags, this compiler and what it targets here."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(flags()).encode())
    key.update(" ".join(compiler).encode())
    key.update(_ask(compiler, "--version").encode())
    # The macros the build's own flags define (-march=native, or a -march of ADAMKIT_CFLAGS):
    # the instruction sets the library will use, on this CPU.
    macros = _ask(compiler, *flags(), "-E", "-dM", "-x", "c", os.devnull)
    key.update("\n".join(sorted(macros.splitlines())).encode())
    return cache_dir() / f"fused_cpu-{key.hexdigest()[:20]}.so"


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(path: Path) -> bool:
    """Whether ``path`` is the library its recorded checksum says it is."""
    try:
        return path.is_file() and _digest_path(path).read_text().strip() == _digest(path)
    except OSError:
        return False


def _discard(path: Path) -> None:
    """Remove a damaged cache entry (a file or a directory squatting on its name)."""
    for entry in (path, _digest_path(path)):
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (blocks while another process builds)."""
    import fcntl

    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(compiler: list[str], path: Path) -> None:
    """Compile to a scratch file beside ``path``, record its checksum, then rename it in."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as scratch:
        partial = Path(scratch) / path.name
        args = (*flags(), "-o", str(partial), str(SOURCE), "-lm")
        try:
            result = subprocess.run(
                [*compiler, *args],
                capture_output=True,
                text=True,
                timeout=_BUILD_SECONDS,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            raise KernelUnavailable(
                f"compiling {SOURCE.name} took over {_BUILD_SECONDS} s"
            ) from error
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelUnavailable(
                f"running the C compiler {compiler[0]} failed: {error}"
            ) from error
        if result.returncode != 0 or not partial.is_file():
            raise KernelUnavailable(
                f"building {SOURCE.name} failed: {_failure(compiler, args, result)}"
            )
        digest = _digest(partial)
        digest_file = Path(scratch) / _digest_path(path).name
        digest_file.write_text(digest + "\n")
        # The checksum first: a reader that finds the library always finds its checksum.
        os.replace(digest_file, _digest_path(path))
        os.replace(partial, path)


def _say(line: str) -> None:
    """A line for a person watching (a terminal on stderr): the first build takes seconds, and
    a silent first ``step()`` that long looks hung. Logs, pipes and tests see nothing."""
    if sys.stderr is not None and sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


def _built(compiler: list[str]) -> Path:
    """The verified library in the cache, building it (once more if it was damaged)."""
    path = _library_path(compiler)
    if _verified(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(path):
            if not _verified(path):  # another process may have built it while we waited
                _discard(path)
                _say(
                    f"adamkit: compiling the fused CPU kernel for this machine (once; about 11 s; "
                    f"cached in {path.parent}) ..."
                )
                start = time.monotonic()
                _build(compiler, path)
                _say(f"adamkit: kernel compiled in {time.monotonic() - start:.1f} s")
    except OSError as error:
        raise KernelUnavailable(f"the kernel cache {path.parent} is not usable: {error}") from error
    if not _verified(path):
        raise KernelUnavailable(f"the library built at {path} does not match its checksum")
    return path


def _declare(library: ctypes.CDLL) -> None:
    pointer, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    library.adamkit_step.restype = i32
    library.adamkit_step.argtypes = [pointer] * 9
    library.adamkit_advance.restype = None
    library.adamkit_advance.argtypes = [i64, pointer, i32, pointer, pointer]
    library.adamkit_step_options.restype = i32
    library.adamkit_step_options.argtypes = [pointer] * 7
    library.adamkit_apply_options.restype = i32
    library.adamkit_apply_options.argtypes = [pointer] * 5
    library.adamkit_adafactor.restype = i32
    library.adamkit_adafactor.argtypes = [pointer] * 3
    library.adamkit_adafactor_takes.restype = i32
    library.adamkit_adafactor_takes.argtypes = [pointer]
    library.adamkit_overlap.restype = i64
    library.adamkit_overlap.argtypes = [i64, pointer, pointer, pointer]


def _address(values: array[Any]) -> int:
    return values.buffer_info()[0]


def _self_test(library: ctypes.CDLL) -> None:
    """One Adam step on three fp32 elements (and an overlap query) against Python's math."""
    from ..optim._algorithms import KINDS  # the table imports this package

    lr, beta1, beta2, eps = 0.1, 0.9, 0.999, 1e-8
    param, grad = array("f", [1.0, -2.0, 0.5]), array("f", [0.5, 0.25, -4.0])
    exp_avg, exp_avg_sq, step = array("f", [0.0] * 3), array("f", [0.0] * 3), array("f", [0.0])
    table = array("Q", map(_address, (param, grad, exp_avg, exp_avg_sq, step)))
    sizes = array("q", [3, 0, 1])  # the element count, then the chunks' starts and total
    t, counters = array("d", [0.0]), array("Q", [_address(step)])
    library.adamkit_advance(1, _address(counters), 0, None, _address(t))
    scalars = array("d", [0.0] * _abi.ROW)
    scalars[_abi.R_A], scalars[_abi.R_B] = lr / (1 - beta1 ** t[0]), math.sqrt(1 - beta2 ** t[0])
    scalars[_abi.R_KIND], scalars[_abi.R_T] = KINDS["adam"], t[0]
    hyper = array("d", [0.0] * _abi.HYPER_SLOTS)
    hyper[_abi.H_LR], hyper[_abi.H_BETA1], hyper[_abi.H_BETA2], hyper[_abi.H_EPS] = (
        lr,
        beta1,
        beta2,
        eps,
    )
    shape = array("q", [0] * _abi.SHAPE_SLOTS)
    shape[_abi.S_COUNT], shape[_abi.S_STATES], shape[_abi.S_SKIP] = 1, 2, 1
    shape[_abi.S_THREADS], shape[_abi.S_ELEMENT] = 1, _abi.E_F32
    arrays: list[array[Any]] = [hyper, shape, sizes, scalars, table]
    status = library.adamkit_step(*map(_address, arrays), None, None, None, None)
    expected = [
        x
        - lr
        * ((1 - beta1) * g / (1 - beta1))
        / (math.sqrt((1 - beta2) * g * g / (1 - beta2)) + eps)
        for x, g in zip([1.0, -2.0, 0.5], [0.5, 0.25, -4.0], strict=True)
    ]
    good = status == 0 and step[0] == 1.0 and t[0] == 1.0
    good = good and all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(param, expected, strict=True)
    )
    starts, sizes, written = (
        array("Q", [64, 96, 200]),
        array("Q", [40, 8, 8]),
        array("B", [1, 0, 1]),
    )
    overlap = library.adamkit_overlap(3, *map(_address, (starts, sizes, written)))
    if not good or overlap != 1:
        raise KernelUnavailable("the compiled kernel failed its self-test (a wrong result)")


_FAILURE: list[str] = []


def _load(compiler: list[str]) -> ctypes.CDLL:
    path = _built(compiler)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:  # e.g. a cache directory on a noexec mount
        raise KernelUnavailable(
            f"the built library {path} cannot be loaded ({error}); set ADAMKIT_CACHE_DIR to a "
            "directory on a file system that allows executing code"
        ) from error
    try:
        _declare(library)
    except AttributeError as error:
        raise KernelUnavailable(f"the library at {path} is not this kernel ({error})") from error
    _self_test(library)
    return library


@cache
def fused_library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it if needed; ``None`` if it cannot be used here
    (one warning then says why, and :func:`unavailable_reason` returns it)."""
    try:
        return _load(_compiler())
    except KernelUnavailable as error:
        reason = str(error)
    _FAILURE.append(reason)
    warnings.warn(
        f"adamkit: the fused CPU kernel is unavailable ({reason}); the optimizers use the "
        "multi-tensor (foreach) path instead, which is slower",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def unavailable_reason() -> str | None:
    """Why the fused kernel cannot be used here, or ``None`` when it can."""
    return None if fused_library() is not None else (_FAILURE[-1] if _FAILURE else "unknown")
