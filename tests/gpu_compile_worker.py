"""Compiles adamkit's Triton kernels for an H100 without one: ``python -m
tests.gpu_compile_worker VARIANTS_JSON``, used by tests/test_gpu.py; ``--table`` compiles every
variant and prints the Markdown table BENCHMARKS.md keeps.

Triton's interpreter runs the kernels' math on the CPU, but not the compiler: a kernel the
interpreter runs can still fail to compile for a card, or compile into slower code than meant.
This process (where ``TRITON_INTERPRET`` is unset, so the kernels are real ``triton.jit``
functions) compiles each variant for sm_90 with Triton's own compiler and the ptxas its wheel
ships, with the constants and options ``launch`` uses (``fused_triton.specialization`` and
``OPTIONS``), and prints one JSON object per variant: the PTX's instruction counts and what
ptxas reports of registers and spills. (A real launch also tells the compiler which pointer
arguments are 16-byte aligned; that only concerns the kernels' single reads of their tables.)
VARIANTS_JSON is a list of ``specialization``'s arguments
(the dtype as a name: "float32", ...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget

from adamkit.kernels import fused_triton
from adamkit.optim._algorithms import ALGORITHMS as TABLE
from adamkit.optim._algorithms import KINDS
from adamkit.optim._fused import state_codec

#: An H100: compute capability 9.0, 32-thread warps.
TARGET = GPUTarget("cuda", 90, 32)
#: The kernels' tensor arguments that are not int64 tables (of addresses, sizes, offsets).
ARGUMENT_TYPES = {"scalars": "*fp64", "hyper": "*fp64", "count": "i64"}
#: PTX instructions counted: contraction, rounding modes, and vector memory accesses.
COUNTED = {
    "fma": r"\bfma\.rn\.f(32|64)",
    "sqrt_rn": r"\bsqrt\.rn\.f(32|64)",
    "div_rn": r"\bdiv\.rn\.f(32|64)",
    "approximate": r"\b(sqrt|div|rsqrt|rcp)\.(approx|full)\.",
    "vector_loads": r"\bld\.global(\.[a-zA-Z0-9_:]+)*\.v[248]\.",
    "vector_stores": r"\bst\.global(\.[a-zA-Z0-9_:]+)*\.v[248]\.",
}


def codecs_of(kernel: str, amsgrad: bool) -> tuple[int, ...]:
    """The codec words of the states of the algorithm whose kernel is ``kernel``."""
    row = next(r for r in TABLE.values() if r.kernel == kernel)
    return tuple(map(state_codec, row.state_keys(amsgrad)))


def compile_variant(arguments: dict[str, Any]) -> dict[str, Any]:
    dtype = getattr(torch, arguments["dtype"])
    codecs = codecs_of(arguments["algorithm"], arguments["amsgrad"])
    kernel, constants = fused_triton.specialization(
        **{**arguments, "algorithm": KINDS[arguments["algorithm"]], "dtype": dtype}
        | {"codecs": codecs}
    )
    signature = {
        name: "constexpr" if name in constants else ARGUMENT_TYPES.get(name, "*i64")
        for name in kernel.arg_names
    }
    source = triton.compiler.ASTSource(kernel, signature, constants)
    compiled = triton.compile(source, target=TARGET, options=fused_triton.OPTIONS)
    ptx = compiled.asm["ptx"]
    report: dict[str, Any] = {
        name: len(re.findall(pattern, ptx)) for name, pattern in COUNTED.items()
    }
    report["kernel"] = kernel.__name__
    report.update(ptxas_report(ptx))
    return report


def ptxas_report(ptx: str) -> dict[str, int]:
    """Registers per thread and bytes spilled, as ``ptxas -v`` reports them."""
    arch = re.search(r"^\.target (\S+)", ptx, re.MULTILINE)
    assert arch is not None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as file:
            file.write(ptx)
        command = [triton.knobs.nvidia.ptxas.path, f"-arch={arch.group(1)}", "-v", path]
        command += ["-o", os.path.join(folder, "kernel.cubin")]
        log = subprocess.run(command, capture_output=True, text=True, check=True)
    text = log.stdout + log.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores", text)
    assert registers is not None and spills is not None, text
    return {"registers": int(registers.group(1)), "spill_bytes": int(spills.group(1))}


def every_variant() -> list[dict[str, Any]]:
    """Every kernel variant the GPU plans can launch (coupled weight decay throughout: the
    three kinds differ by one or two operations)."""
    variants = []
    for aligned in (True, False):
        for algorithm in ("radam", "nadam", "adamax"):  # in full precision
            for dtype in ("float32", "float64", "bfloat16", "float16"):
                variants.append(
                    {"algorithm": algorithm, "decay": 1, "amsgrad": False, "dtype": dtype}
                    | {"aligned": aligned}
                )
        for algorithm, amsgrad in (
            ("adam", False),
            ("adam", True),
            ("radam", False),
            ("nadam", False),
            ("adamax", False),
        ):
            for param_format, dtype in ((0, "float32"), (1, "bfloat16"), (2, "bfloat16")):
                variants.append(
                    {"algorithm": algorithm, "decay": 1, "amsgrad": amsgrad, "dtype": dtype}
                    | {"aligned": aligned, "param_format": param_format}
                )
    return variants


#: Each kernel's algorithm, by the kernel's name.
ALGORITHM_NAMES = {row.kernel: row.name for row in reversed(TABLE.values()) if row.kernel}
PARAM_FORMATS = ("fp32 params", "bf16 params", "SR bf16 params")


def resident_warps(registers: int, warps: int) -> int:
    """Warps an H100 SM holds at once with this many registers a thread (64K registers an SM,
    allocated 8 a thread at a time; at most 2048 threads and 32 blocks)."""
    per_block = -(-registers // 8) * 8 * 32 * warps
    blocks = min(65536 // per_block, 2048 // (32 * warps), 32)
    return blocks * warps


def table() -> str:
    """Every variant compiled from scratch: a Markdown table of compile time (this machine's
    CPU; the first step on a card pays it once, then Triton's cache has it), registers,
    spills, the SM's resident warps, and vector accesses."""
    rows = [
        "| kernel | algorithm | dtype / storage | aligned | compile s | registers | spills (B) "
        "| warps/SM | vector loads, stores |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for arguments in every_variant():
        started = time.perf_counter()
        r = compile_variant(arguments)
        seconds = time.perf_counter() - started
        name = ALGORITHM_NAMES[arguments["algorithm"]] + (
            " AMSGrad" if arguments["amsgrad"] else ""
        )
        what = arguments["dtype"]
        if "param_format" in arguments:
            what = f"low-precision state, {PARAM_FORMATS[arguments['param_format']]}"
        warps = resident_warps(r["registers"], fused_triton.OPTIONS["num_warps"])
        rows.append(
            f"| {r['kernel']} | {name} | {what} | {'yes' if arguments['aligned'] else 'no'} "
            f"| {seconds:.2f} | {r['registers']} | {r['spill_bytes']} | {warps} "
            f"| {r['vector_loads']}, {r['vector_stores']} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:] == ["--table"]:
        print(table())
        return
    for arguments in json.loads(sys.argv[1]):
        print(json.dumps({"variant": arguments, **compile_variant(arguments)}), flush=True)


if __name__ == "__main__":
    main()
