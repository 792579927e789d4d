"""Compiles adamkit's Triton kernels for an H100 without one: ``python -m
tests.gpu_compile_worker VARIANTS_JSON``, used by tests/test_gpu.py.

Triton's interpreter runs the kernels' math on the CPU, but not the compiler: a kernel the
interpreter runs can still fail to compile for a card, or compile into slower code than meant.
This process (where ``TRITON_INTERPRET`` is unset, so the kernels are real ``triton.jit``
functions) compiles each variant for sm_90 with Triton's own compiler and the ptxas its wheel
ships, exactly as ``launch`` specializes and compiles it (``fused_triton.specialization`` and
``OPTIONS``), and prints one JSON object per variant: the PTX's instruction counts and what
ptxas reports of registers and spills. VARIANTS_JSON is a list of ``specialization``'s arguments
(the dtype as a name: "float32", ...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget

from adamkit.kernels import fused_triton

#: An H100: compute capability 9.0, 32-thread warps.
TARGET = GPUTarget("cuda", 90, 32)
#: The kernels' tensor arguments that are not int64 tables of addresses, numbers or offsets.
ARGUMENT_TYPES = {"chunk_tensor": "*i32", "formats": "*i32", "scalars": "*fp64", "hyper": "*fp64"}
#: PTX instructions counted: contraction, rounding modes, and vector memory accesses.
COUNTED = {
    "fma": r"\bfma\.rn\.f(32|64)",
    "sqrt_rn": r"\bsqrt\.rn\.f(32|64)",
    "div_rn": r"\bdiv\.rn\.f(32|64)",
    "approximate": r"\b(sqrt|div|rsqrt|rcp)\.(approx|full)\.",
    "vector_loads": r"\bld\.global(\.[a-zA-Z0-9_:]+)*\.v[248]\.",
    "vector_stores": r"\bst\.global(\.[a-zA-Z0-9_:]+)*\.v[248]\.",
}


def compile_variant(arguments: dict[str, Any]) -> dict[str, Any]:
    dtype = getattr(torch, arguments["dtype"])
    kernel, constants = fused_triton.specialization(**{**arguments, "dtype": dtype})
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


def main() -> None:
    for arguments in json.loads(sys.argv[1]):
        print(json.dumps({"variant": arguments, **compile_variant(arguments)}), flush=True)


if __name__ == "__main__":
    main()
