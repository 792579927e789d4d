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
from adamkit.optim import _device, _fused, _precision
from adamkit.optim._algorithms import noise

SRC = Path(_abi.__file__).resolve().parents[1]
C_SOURCE = SRC / "kernels" / "fused_cpu.c"


def test_python_takes_the_numbers_from_the_abi() -> None:
    assert _fused.ALGORITHMS is _abi.ALGORITHMS and _device.ALGORITHMS is _abi.ALGORITHMS
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
    literal = re.findall(r"\b(ADAM|RADAM|NADAM|ADAMAX|MAXIMIZE|AMSGRAD|F_Q8|SALT_MAX)\s*=\s*\d", c)
    assert not literal, literal


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
        "K_RADAM": _abi.K_RADAM, "ROW": _abi.ROW, "F_Q8": _abi.F_Q8, "Q8_BLOCK": _abi.Q8_BLOCK,
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


def test_the_kernel_refuses_a_state_count_it_does_not_take() -> None:
    """adamkit_step reads the rows its ``shape`` describes: a state count outside 2 ..
    MAX_STATES, or a call whose flags need rows it does not pass, is refused (status 2)
    before any memory is touched."""
    from array import array

    from adamkit.kernels import fused_library

    library = fused_library()
    if library is None:
        pytest.skip("the fused kernel is unavailable here")
    step = array("f", [0.0])
    for states in (1, _abi.MAX_STATES + 1):
        # Only the step counter is real memory; the other rows are null and must not be read.
        table = array("Q", [0] * (2 + states) + [step.buffer_info()[0]])
        hyper = array("d", [0.1] * _abi.HYPER_SLOTS)
        shape = array("q", [0] * _abi.SHAPE_SLOTS)
        shape[_abi.S_COUNT], shape[_abi.S_STATES], shape[_abi.S_THREADS] = 1, states, 1
        numels = array("q", [4])
        addresses = [a.buffer_info()[0] for a in (hyper, shape, numels, table)]
        assert library.adamkit_step(*addresses, None, None, None) == 2
        assert step[0] == 0.0
    # The rows must be there for what the call says: AMSGrad's running maximum, NAdam's
    # mu_product, low-precision storage's formats/salts/codecs, 8-bit state's scales.
    table = array("Q", [0] * 4 + [step.buffer_info()[0]])
    addresses = [a.buffer_info()[0] for a in (hyper, shape, numels, table)]
    formats = array("B", [_abi.F_Q8])
    salts, codecs = array("I", [0]), array("i", [0, 0])
    wide = [a.buffer_info()[0] for a in (formats, salts, codecs)]
    cases = [
        ({_abi.S_FLAGS: _abi.AMSGRAD}, [None] * 3),
        ({_abi.S_ALGO: _abi.ALGORITHMS["nadam"]}, [None] * 3),
        ({_abi.S_ELEMENT: _abi.E_WIDE}, [None] * 3),
        ({_abi.S_ELEMENT: _abi.E_WIDE}, wide),  # an 8-bit tensor, and no rows of scales
        ({_abi.S_ELEMENT: 7}, [None] * 3),
        ({_abi.S_COUNT: -1}, [None] * 3),
    ]
    for changes, rest in cases:
        shape[:] = array("q", [0] * _abi.SHAPE_SLOTS)
        shape[_abi.S_COUNT], shape[_abi.S_STATES], shape[_abi.S_THREADS] = 1, 2, 1
        for slot, value in changes.items():
            shape[slot] = value
        assert library.adamkit_step(*addresses, *rest) == 2, changes
        assert step[0] == 0.0
