"""The numbers the Python, C and Triton sides of the fused step share are defined once, in
``adamkit/kernels/_abi.py``: the others take them from there, and none spells one out again."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adamkit.kernels import _abi
from adamkit.optim import _device, _precision
from adamkit.optim._algorithms import KINDS, noise

SRC = Path(_abi.__file__).resolve().parents[1]
C_SOURCE = SRC / "kernels" / "fused_cpu.c"


def test_python_takes_the_numbers_from_the_abi() -> None:
    assert _device.KINDS is KINDS
    assert (_precision.NATIVE, _precision.BF16, _precision.BF16_SR, _precision.Q8) == (
        _abi.F_F32, _abi.F_BF16, _abi.F_BF16_SR, _abi.F_Q8,
    )  # fmt: skip
    assert _precision.F16 == _abi.F_F16 and _precision.BLOCK == _abi.Q8_BLOCK
    assert _device.ROW == _abi.ROW
    streams = {k: noise(k)[0] for k in ("exp_avg", "param", "max_exp_avg_sq")}
    assert streams["exp_avg"] == _abi.SALT_MOMENTS and streams["param"] == _abi.SALT_PARAM
    assert streams["max_exp_avg_sq"] == _abi.SALT_MAX


def test_no_source_spells_a_shared_number_out_again() -> None:
    spelled = {
        "0x9e3779b9", "0x85ebca6b", "0xc2b2ae35", "0x7feb352d", "0x846ca68b", "0x7f800000",
        "0x7fc00000", "112 << 23", "96 << 23",
    }  # fmt: skip
    for path in [*SRC.rglob("*.py"), C_SOURCE]:
        if path.name == "_abi.py":
            continue
        text = path.read_text().lower()
        found = sorted(n for n in spelled if n in text)
        assert not found, f"{path.relative_to(SRC)} spells out {found}: import it from _abi"
    c = C_SOURCE.read_text()
    literal = re.findall(r"\b(K_\w+|MAXIMIZE|DECOUPLED|F_Q8|SALT_MAX|R_KIND)\s*=\s*\d", c)
    assert not literal, literal
    # Every kind of the table has a loop in C (a body, and an entry in the list of kinds that
    # defines and dispatches every loop), and its number from the table.
    listed = re.search(r"#define FOR_EACH_KIND\(X\)((?:.*\\\n)*.*)", c)
    assert listed is not None
    assert re.findall(r"X\((\w+), \d\)", listed.group(1)) == [k.upper() for k in KINDS]
    for kind in KINDS:
        assert f"#define BODY_{kind.upper()}(" in c, kind
    assert f"-DAK_K_AMSGRAD={KINDS['amsgrad']}" in _abi.c_defines()


def test_the_c_kernel_does_not_compile_without_the_abi() -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    bare = subprocess.run(
        [cc, "-fsyntax-only", "-std=c11", str(C_SOURCE)], capture_output=True, text=True
    )
    assert bare.returncode != 0 and "adamkit.kernels._abi.c_defines()" in bare.stderr
    given = subprocess.run(
        [cc, "-fsyntax-only", "-std=c11", *_abi.c_defines(), str(C_SOURCE)],
        capture_output=True,
        text=True,
    )
    assert given.returncode == 0, given.stderr[-2000:]


def test_triton_takes_the_numbers_from_the_abi(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    if "adamkit.kernels.fused_triton" not in sys.modules:
        # Triton decides at import whether its kernels are interpreted; test_gpu.py needs
        # them interpreted on a machine without a GPU, in this process too.
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    ft = importlib.import_module("adamkit.kernels.fused_triton")

    pairs = {
        "K_RADAM": KINDS["radam"], "K_ADAMAX": KINDS["adamax"], "ROW": _abi.ROW,
        "R_KIND": _abi.R_KIND, "R_T": _abi.R_T, "F_Q8": _abi.F_Q8, "Q8_BLOCK": _abi.Q8_BLOCK,
        "M_NAN": _abi.M_NAN, "V_INF": _abi.V_INF, "NAN_BITS": _abi.NAN_BITS,
        "SEED_COUNT": _abi.SEED_COUNT, "SEED_SALT": _abi.SEED_SALT,
        "PARAM_STREAM": (_abi.SALT_PARAM * _abi.SEED_STREAM) % (1 << 32),
    }  # fmt: skip
    for name, value in pairs.items():
        assert getattr(ft, name).value == value, name
    # A state's sign, half and stream reach the low-precision kernel from its codec word.
    word = _abi.CODEC_UNSIGNED | _abi.CODEC_HIGH | _abi.SALT_MAX << _abi.CODEC_STREAM
    _, constants = ft.specialization(0, 1, True, torch.float32, True, 0, (0, word, word))
    assert (constants["UNSIGNED0"], constants["HIGH0"], constants["STREAM0"]) == (False, False, 0)
    stream = (_abi.SALT_MAX * _abi.SEED_STREAM) % (1 << 32)
    assert (constants["UNSIGNED2"], constants["HIGH2"], constants["STREAM2"]) == (
        True,
        True,
        stream,
    )


def test_the_kernel_refuses_a_call_that_does_not_describe_its_rows() -> None:
    """adamkit_step reads the rows its ``shape`` describes: a state count outside 2 ..
    MAX_STATES, a kind it has no loop for, a kind that needs more states than are passed, or
    low-precision storage without its arrays is refused (status 2) before any memory is
    touched."""
    from array import array

    from adamkit.kernels import fused_library

    library = fused_library()
    if library is None:
        pytest.skip("the fused kernel is unavailable here")
    # Rows of null addresses that must not be read: any access would crash the test.
    table = array("Q", [0] * (3 + _abi.MAX_STATES + 1))
    hyper = array("d", [0.1] * _abi.HYPER_SLOTS)
    sizes = array("q", [4, 0, 1])
    formats = array("B", [_abi.F_Q8])
    salts, codecs, scratch = array("I", [0]), array("i", [0, 0]), array("f", [0.0] * 8192)
    wide = [a.buffer_info()[0] for a in (formats, salts, codecs, scratch)]

    def call(changes: dict[int, int], kind: float, rest: list[int | None]) -> int:
        shape = array("q", [0] * _abi.SHAPE_SLOTS)
        shape[_abi.S_COUNT], shape[_abi.S_STATES], shape[_abi.S_THREADS] = 1, 2, 1
        shape[_abi.S_SKIP] = 1
        for slot, value in changes.items():
            shape[slot] = value
        scalars = array("d", [0.1] * _abi.ROW)
        scalars[_abi.R_KIND] = kind
        arrays = (hyper, shape, sizes, scalars, table)
        return int(library.adamkit_step(*[a.buffer_info()[0] for a in arrays], *rest))

    none = [None] * 4
    adam, amsgrad = KINDS["adam"], KINDS["amsgrad"]
    cases = [
        ({_abi.S_STATES: 1}, adam, none),
        ({_abi.S_STATES: _abi.MAX_STATES + 1}, adam, none),
        ({}, amsgrad, none),  # AMSGrad's loop, and no row for its running maximum
        ({}, len(KINDS), none),  # a kind no loop implements
        ({}, -1, none),
        ({}, float("nan"), none),
        ({}, 0.5, none),
        ({_abi.S_ELEMENT: _abi.E_WIDE}, adam, none),
        ({_abi.S_ELEMENT: _abi.E_WIDE}, adam, wide),  # an 8-bit tensor, and no rows of scales
        ({_abi.S_ELEMENT: 7}, adam, none),
        ({_abi.S_COUNT: -1}, adam, none),
        ({_abi.S_SKIP: -1}, adam, none),
    ]
    for changes, kind, rest in cases:
        assert call(changes, kind, rest) == 2, (changes, kind)


def test_counters_advance_in_their_own_dtype() -> None:
    """adamkit_advance rounds ``step += 1`` and ``mu_product *= mu`` as torch does."""
    from array import array

    from adamkit.kernels import fused_library

    library = fused_library()
    if library is None:
        pytest.skip("the fused kernel is unavailable here")
    for dtype in (torch.float32, torch.float64):
        ours = [torch.tensor(v, dtype=dtype) for v in (0.0, 16777216.0, 0.3)]
        theirs = [t.clone() for t in ours]
        table = array("Q", [t.data_ptr() for t in ours])
        out = array("d", [0.0] * 3)
        f64 = int(dtype == torch.float64)
        library.adamkit_advance(3, table.buffer_info()[0], f64, None, out.buffer_info()[0])
        for t in theirs:
            t += 1
        assert [t.item() for t in ours] == [t.item() for t in theirs] == list(out)
        factors = array("d", [0.9 * (1 - 0.5 * 0.96**0.004), 1 / 3, 0.7])
        library.adamkit_advance(
            3, table.buffer_info()[0], f64, factors.buffer_info()[0], out.buffer_info()[0]
        )
        for t, factor in zip(theirs, factors, strict=True):
            t *= factor
        assert [t.item() for t in ours] == [t.item() for t in theirs] == list(out)
