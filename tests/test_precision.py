"""Low-precision optimizer state (``state_precision="bf16" | "8bit"``) and stochastic rounding.

What is proven here:

* the 8-bit codes meet their error bound in every block, and the fused kernels' codecs
  (C, Triton) give the same bits as ``adamkit.optim._precision`` (torch operations);
* NaN and infinities keep codes of their own: one NaN gradient element makes exactly one
  parameter element NaN, as torch's fp32 optimizers do, on every execution path, and the rest
  of its block stays within the 8-bit bound of fp32 (a huge *finite* outlier does not: it is
  its block's scale, a known limit of the format, recorded as an expected failure);
* stochastic rounding is unbiased (statistically, within 5 standard errors), and it lets bf16
  parameters absorb updates far below half a bf16 step, where rounding to nearest stalls;
* every registry case with low-precision state stays close to the same case with full
  precision over 60 steps, and its three execution paths agree with each other;
* checkpoints keep the compact form, survive ``torch.load(weights_only=True)``, resume bit for
  bit, and convert between precisions (torch.optim's fp32 checkpoints included);
* :func:`adamkit.state_memory` reports the bytes per parameter the issue targets.

Tolerances against full precision, in units of the largest possible displacement
``lr * steps`` (Adam moves each element by at most about ``lr`` per step): the 8-bit codes keep
a relative error of at most 1/16 on ``m`` and on ``v`` (so at most about 1/11 on the update of
an element within range), so the maximum deviation stays under 0.2 and the mean under 0.01
(measured on this problem: 0.14 for AMSGrad, whose running maximum compounds the error, 0.06
elsewhere; means up to 0.007). bf16 state is 16 times finer: max 0.02, mean 0.001 (measured
0.011 and 0.0006). The execution paths run the same codecs: foreach and for-loop are
bit-identical; the fused kernel rounds its fp32 math in another order, which can flip a
rounding decision, so it is held within ``0.1 * lr`` (measured up to 0.04 lr).
"""

from __future__ import annotations

import copy
import ctypes
import importlib
import io
import math
import sys
from typing import Any

import pytest
import torch

import adamkit
import adamkit.optim._router as router
from adamkit.kernels import fused_library
from adamkit.optim import _precision as precision
from adamkit.optim._algorithms import noise
from adamkit.optim._checkpoint import live_entry

from .registry import PATHS_DIFFER, PRECISION_CASES, TABLE, Case, params

SHAPES = [(64, 80), (300,), (70, 70), (4096,)]  # 8-bit, small (full precision), partial block
STEPS = 40  # the bounds are per step (deviation / (lr * STEPS)); 60 before, at 1.5x the time


def make_params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in SHAPES]


def grad_stream(ps: list[torch.Tensor], steps: int) -> list[list[torch.Tensor | None]]:
    """Gradients whose per-element scale spans about four decades within each block (as real
    gradients do across a weight matrix); parameter 1 skips every third step."""
    g = torch.Generator().manual_seed(1)
    scales = [torch.exp(torch.randn(p.shape, generator=g)) for p in ps]
    return [
        [
            None if i == 1 and t % 3 == 2 else (torch.randn(p.shape, generator=g) * s).to(p.dtype)
            for i, (p, s) in enumerate(zip(ps, scales, strict=True))
        ]
        for t in range(steps)
    ]


def run(name: str, kwargs: dict, steps: int = STEPS, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    ps = make_params(dtype)
    opt = getattr(adamkit, name)(ps, **kwargs)
    for grads in grad_stream(ps, steps):
        for p, grad in zip(ps, grads, strict=True):
            p.grad = grad
        opt.step()
    return ps, opt


# --------------------------------------------------------------------------------- codecs
def _heavy_tailed(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp(3 * torch.randn(n, generator=g))


@pytest.mark.parametrize("unsigned", [False, True], ids=["exp_avg", "exp_avg_sq"])
def test_8bit_error_bound_in_every_block(unsigned: bool) -> None:
    x = _heavy_tailed(300 * 256 + 77)  # a partial last block
    if unsigned:
        x = x * x
    codes, scale = precision.encode_8bit(x, unsigned)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert scale.shape == (precision.blocks(x.numel()),)
    back = precision.decode_8bit(codes, scale, unsigned)
    per_element = scale.repeat_interleave(precision.BLOCK)[: x.numel()]
    torch.testing.assert_close(
        scale, torch.nn.functional.pad(x.abs(), (0, 179)).view(-1, 256).amax(1)
    )
    # The smallest value kept to 1/16, relative to the scale: v's lowest binade starts at code
    # 0 (2**-31); m's code 0 is zero, so its first value is 2**-15 * (1 + 1/8), and
    # everything from half-way there rounds up to it.
    smallest = 2.0**-31 if unsigned else 2.0**-15 * (1 + 1 / 16)
    in_range = x.abs() >= smallest * per_element
    # Within range: at most half a unit of the 3-bit mantissa, 1/16 of the value.
    relative = (back - x).abs() / x.abs()
    assert relative[in_range].max() <= 1 / 16
    # Below range: m rounds to 0 or the lowest binade; v never decodes below 2**-31 * scale,
    # so a tiny v cannot turn the update into m / eps.
    below = (back - x).abs()[~in_range] / per_element[~in_range]
    assert below.max() <= smallest
    if unsigned:
        assert (back[per_element > 0] > 0).all()
    # Signs survive.
    assert torch.equal(torch.sign(back[back != 0]), torch.sign(x[back != 0]))


def test_8bit_special_blocks() -> None:
    x = torch.zeros(3 * 256)
    x[256:512] = torch.linspace(-1, 1, 256)
    x[600] = math.nan
    codes, scale = precision.encode_8bit(x, unsigned=False)
    back = precision.decode_8bit(codes, scale, unsigned=False)
    assert scale[0] == 0 and torch.equal(back[:256], torch.zeros(256))  # an all-zero block
    assert back[256] == -1 and back[511] == 1  # the extremes are exact
    assert torch.isnan(back[600]) and scale[2] == 0  # a NaN keeps to its element
    assert torch.isnan(back).sum() == 1 and (back[512:600] == 0).all()


def _specials(unsigned: bool) -> torch.Tensor:
    """Heavy-tailed values with every kind of non-finite value in them, a block of nothing
    else, huge finite values, and a block whose scale is so small that 1 / scale overflows."""
    x = _heavy_tailed(8 * 256 + 77, seed=5)
    if unsigned:
        x = x * x
    negative_nan = torch.tensor([0xFFC00123 - (1 << 32)], dtype=torch.int32).view(torch.float32)
    x[10], x[20], x[30], x[40], x[50] = math.nan, math.inf, -math.inf, negative_nan, -0.0
    x[256:512] = torch.tensor([math.nan, math.inf, -math.inf, -math.nan]).repeat(64)
    x[600], x[620] = 3.4e38, math.nan  # a scale near float32's largest: 1 / scale is subnormal
    x[800] = -2e19  # its block's scale (the block's other elements round to 0 or the least code)
    x[1024:1280] = torch.linspace(-1e-39, 1.1e-39, 256)  # subnormal: 1 / scale is inf
    x[2000] = -math.inf  # in the partial last block
    return x


@pytest.mark.parametrize("unsigned", [False, True], ids=["exp_avg", "exp_avg_sq"])
def test_8bit_non_finite_values_keep_their_own_codes(unsigned: bool) -> None:
    """A NaN or an infinity decodes as itself, and the other elements of its block are coded
    as if it were not there (the block's scale is its largest finite magnitude)."""
    x = _specials(unsigned)
    codes, scale = precision.encode_8bit(x, unsigned)
    back = precision.decode_8bit(codes, scale, unsigned)
    finite = torch.isfinite(x)
    assert torch.equal(torch.isnan(back), torch.isnan(x))
    assert torch.equal(torch.isinf(back), torch.isinf(x))
    signs = torch.sign(x[torch.isinf(x)])
    assert torch.equal(torch.sign(back[torch.isinf(x)]), signs.abs() if unsigned else signs)
    assert (back[torch.isnan(x)].view(torch.int32) == 0x7FC00000).all()  # one NaN
    assert torch.isfinite(back[finite]).all()  # finite values, tiny or huge, stay finite
    # The same codes and scales as with zeros in their places.
    clean_codes, clean_scale = precision.encode_8bit(torch.where(finite, x, 0.0), unsigned)
    assert torch.equal(codes[finite], clean_codes[finite])
    assert torch.equal(scale, clean_scale)
    assert scale[1] == 0  # a block of non-finite values only
    for i in (600, 800):  # each its block's largest: exact
        assert back[i] == (x[i].abs() if unsigned else x[i])


def _kernel() -> ctypes.CDLL:
    library = fused_library()
    if library is None:
        pytest.skip("the fused kernel is unavailable here")
    return library


@pytest.mark.parametrize("unsigned", [False, True], ids=["exp_avg", "exp_avg_sq"])
def test_kernel_8bit_codec_is_bit_identical(unsigned: bool) -> None:
    library = _kernel()
    x = _heavy_tailed(40 * 256 + 5, seed=3)
    if unsigned:
        x = x * x
    x[1000] = 0.0
    x[2000] = math.inf
    x[5000] = -0.0
    codes, scale = precision.encode_8bit(x, unsigned)
    c_codes = torch.empty_like(codes)
    c_scale = torch.empty_like(scale)
    void = ctypes.c_void_p
    library.adamkit_encode_q8.argtypes = [void, ctypes.c_int64, void, void, ctypes.c_int]
    library.adamkit_encode_q8(
        x.data_ptr(), x.numel(), c_codes.data_ptr(), c_scale.data_ptr(), unsigned
    )
    assert torch.equal(codes, c_codes)
    assert torch.equal(scale, c_scale)
    out = torch.empty_like(x)
    library.adamkit_decode_q8.argtypes = [void, void, ctypes.c_int64, void, ctypes.c_int]
    library.adamkit_decode_q8(
        codes.data_ptr(), scale.data_ptr(), x.numel(), out.data_ptr(), unsigned
    )
    decoded = precision.decode_8bit(codes, scale, unsigned)
    assert torch.equal(out.view(torch.int32), decoded.view(torch.int32))  # NaN bits included


def _triton_device(monkeypatch: pytest.MonkeyPatch) -> str:
    """Where adamkit's Triton kernels run: the GPU, or else the CPU through Triton's interpreter
    (as tests/test_gpu.py runs them), with CPU tensors sent to the GPU path."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setattr(router, "gpu_path", lambda device: True)
    if "adamkit.kernels.fused_triton" not in sys.modules:
        # Triton decides at definition (import) whether a kernel is interpreted.
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernels = importlib.import_module("adamkit.kernels.fused_triton")
    if type(kernels.fused_step).__name__ != "InterpretedFunction":
        pytest.skip("adamkit's Triton kernels were imported for a GPU, and there is none")
    return "cpu"


def _codec(implementation: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(encode, decode) of the fused kernels' 8-bit codec: the C library's or the Triton
    kernel's, with _precision's signatures (CPU tensors in and out)."""
    if implementation == "C":
        library = _kernel()
        void = ctypes.c_void_p
        library.adamkit_encode_q8.argtypes = [void, ctypes.c_int64, void, void, ctypes.c_int]
        library.adamkit_decode_q8.argtypes = [void, void, ctypes.c_int64, void, ctypes.c_int]

        def c_encode(x: torch.Tensor, unsigned: bool) -> tuple[torch.Tensor, torch.Tensor]:
            codes = torch.empty(x.shape, dtype=torch.uint8)
            scale = torch.empty(precision.blocks(x.numel()))
            library.adamkit_encode_q8(
                x.data_ptr(), x.numel(), codes.data_ptr(), scale.data_ptr(), unsigned
            )
            return codes, scale

        def c_decode(codes: torch.Tensor, scale: torch.Tensor, unsigned: bool) -> torch.Tensor:
            out = torch.empty(codes.shape)
            library.adamkit_decode_q8(
                codes.data_ptr(), scale.data_ptr(), codes.numel(), out.data_ptr(), unsigned
            )
            return out

        return c_encode, c_decode
    device = _triton_device(monkeypatch)
    kernels = importlib.import_module("adamkit.kernels.fused_triton")
    block = kernels.BLOCK

    def triton_encode(x: torch.Tensor, unsigned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(device)
        codes = torch.empty(x.shape, dtype=torch.uint8, device=device)
        scale = torch.empty(precision.blocks(x.numel()), device=device)
        grid = (-(-x.numel() // block),)
        kernels.q8_encode[grid](
            x, codes, scale, x.numel(), UNSIGNED=unsigned, BLOCK=block, **kernels.OPTIONS
        )
        return codes.cpu(), scale.cpu()

    def triton_decode(codes: torch.Tensor, scale: torch.Tensor, unsigned: bool) -> torch.Tensor:
        codes, scale = codes.to(device), scale.to(device)
        out = torch.empty(codes.shape, device=device)
        grid = (-(-codes.numel() // block),)
        kernels.q8_decode[grid](
            codes, scale, out, codes.numel(), UNSIGNED=unsigned, BLOCK=block, **kernels.OPTIONS
        )
        return out.cpu()

    return triton_encode, triton_decode


def _assert_same_floats(got: torch.Tensor, expected: torch.Tensor, exact: bool) -> None:
    """The same float32 bits; where ``exact`` is false (a GPU), any NaN for a NaN that comes
    of arithmetic on a NaN or infinite scale (CPUs and GPUs make different NaNs)."""
    if exact:
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
        return
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), expected[~nan].view(torch.int32))


@pytest.mark.parametrize("implementation", ["C", "Triton"])
@pytest.mark.parametrize("unsigned", [False, True], ids=["exp_avg", "exp_avg_sq"])
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # Triton's interpreter
def test_8bit_codecs_agree_on_non_finite_and_huge_values(
    unsigned: bool, implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN (any sign or payload), infinities, huge and tiny finite values: the fused kernels'
    codecs give _precision's codes, scales and decoded bits. Decoding is checked for every code
    under scales of every kind (0, subnormal, huge; inf and NaN, which older releases wrote)."""
    encode, decode = _codec(implementation, monkeypatch)
    exact = implementation == "C" or not torch.cuda.is_available()
    x = _specials(unsigned)
    codes, scale = precision.encode_8bit(x, unsigned)
    their_codes, their_scale = encode(x, unsigned)
    assert torch.equal(their_codes, codes)
    assert torch.equal(their_scale.view(torch.int32), scale.view(torch.int32))
    _assert_same_floats(
        decode(codes, scale, unsigned), precision.decode_8bit(codes, scale, unsigned), exact
    )

    every_code = torch.arange(256, dtype=torch.uint8).repeat(6)
    scales = torch.tensor([0.0, 1.0, 2.0**-130, 3.4e38, math.inf, math.nan])
    expected = precision.decode_8bit(every_code, scales, unsigned)
    decoded = decode(every_code, scales, unsigned)
    _assert_same_floats(decoded, expected, exact)
    nan_code = 253 if unsigned else 125
    reserved_nan = (every_code.int() & (255 if unsigned else 127)) == nan_code
    assert (decoded[reserved_nan].view(torch.int32) == 0x7FC00000).all()  # on every device


@pytest.mark.parametrize("key", [None, "exp_avg", "exp_avg_sq", "param"])
def test_kernel_bf16_rounding_is_bit_identical(key: str | None) -> None:
    """Rounding to nearest (key None), and stochastic rounding with each noise stream: the
    low half of the moments' hash (exp_avg), its high half (exp_avg_sq), the parameter's."""
    library = _kernel()
    x = _heavy_tailed(10_000, seed=4)
    x[:4] = torch.tensor([math.nan, math.inf, -math.inf, 3.4e38])
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    void = ctypes.c_void_p
    library.adamkit_round_bf16.argtypes = [
        void,
        ctypes.c_int64,
        void,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    if key is None:
        library.adamkit_round_bf16(x.data_ptr(), x.numel(), out.data_ptr(), 0, 0)
        expected = x.bfloat16()
    else:
        seed = precision.rounding_seed(17.0, 5, key)
        high = noise(key)[1]
        library.adamkit_round_bf16(x.data_ptr(), x.numel(), out.data_ptr(), 1 if high else 2, seed)
        expected = precision.to_bf16_stochastic(x, seed, high)
    nan = torch.isnan(x)
    assert torch.isnan(out[nan].float()).all() and torch.isnan(expected[nan].float()).all()
    assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16))


# ------------------------------------------------------------------- stochastic rounding
def test_stochastic_rounding_is_unbiased() -> None:
    # Values at fractions 0.1 .. 0.9 of the way between two bf16 neighbours.
    low = torch.tensor(1.0 + 2**-7 * 3)
    fractions = torch.linspace(0.1, 0.9, 9)
    x = (low + fractions * 2**-7).repeat_interleave(20_000)
    rounded = precision.to_bf16_stochastic(x, seed=12345).float()
    assert set(rounded.unique().tolist()) <= {low.item(), low.item() + 2**-7}
    means = rounded.view(9, -1).mean(1)
    exact = x.view(9, -1)[:, 0]
    # Each element is a Bernoulli draw of the upper neighbour: standard error per group.
    standard_error = 2**-7 * torch.sqrt(fractions * (1 - fractions) / 20_000)
    assert ((means - exact).abs() <= 5 * standard_error).all(), (means - exact) / standard_error
    # Other seeds, other draws; values exactly representable never move.
    assert not torch.equal(rounded, precision.to_bf16_stochastic(x, seed=1).float())
    exact_values = torch.tensor([1.0, -2.0, 0.0, 2**-100])
    assert torch.equal(precision.to_bf16_stochastic(exact_values, 7).float(), exact_values)


@pytest.mark.parametrize("path", [{"fused": True}, {"foreach": True}], ids=["fused", "foreach"])
def test_bf16_parameters_absorb_small_updates_with_stochastic_rounding(path: dict) -> None:
    # lr = 1e-4 at 1.0 is 1/39 of a bf16 step: rounding to nearest loses every update.
    def final(stochastic: bool) -> torch.Tensor:
        p = torch.ones(20_000, dtype=torch.bfloat16, requires_grad=True)
        # Without stochastic rounding, bf16 parameters step as torch's do (foreach).
        where = path if stochastic else {"foreach": True}
        opt = adamkit.Adam([p], lr=1e-4, stochastic_rounding=stochastic, **where)
        for _ in range(100):
            p.grad = torch.ones_like(p)  # Adam steps by lr per step on a constant gradient
            opt.step()
        return p.detach().float()

    assert torch.equal(final(False), torch.ones(20_000))  # stalled
    moved = final(True)
    expected = 1 - 100 * 1e-4
    # Each element's error is a sum of 100 independent unbiased roundings of at most one bf16
    # step (2**-8 below 1.0), each with a standard deviation of at most half a step.
    standard_error = math.sqrt(100) * 2**-9 / math.sqrt(20_000)
    assert abs(moved.mean().item() - expected) < 5 * standard_error


# ------------------------------------------------------------------ parity with fp32
def _full_precision(case: Case) -> dict:
    return {k: v for k, v in case.kwargs.items() if k != "state_precision"}


@params(PRECISION_CASES)
def test_close_to_full_precision(case: Case) -> None:
    low, opt = run(case.name, case.kwargs)
    full, _ = run(case.name, _full_precision(case))
    lr = opt.param_groups[0]["lr"]
    bound = 0.2 if case.kwargs["state_precision"] == "8bit" else 0.02
    for i, (a, b) in enumerate(zip(low, full, strict=True)):
        deviation = (a - b).abs() / (lr * STEPS)
        assert deviation.max() <= bound, f"param {i}: max deviation {deviation.max():.3g}"
        assert deviation.mean() <= bound / 20, f"param {i}: mean deviation {deviation.mean():.3g}"
    # The state really is compact: what each tensor's size calls for; a state that copies the
    # weights (schedule-free's z) is kept as the weights.
    # Adafactor's row and column statistics stay in full precision.
    row = TABLE[case.name]
    for p in low:
        entry = opt.state[p]
        fmt = precision.state_format(p, case.kwargs["state_precision"])
        expected = {precision.Q8: torch.uint8, precision.BF16_SR: torch.bfloat16}.get(fmt, p.dtype)
        for key in row.shapes(tuple(p.shape)):
            full = key in row.copies or key in row.reduced
            assert entry[key].dtype == (p.dtype if full else expected), key
            assert (f"{key}_scale" in entry) == (fmt == precision.Q8 and not full)


@params([c for c in PRECISION_CASES if c.kwargs.get("foreach") is True])
def test_execution_paths_agree(case: Case) -> None:
    foreach, opt = run(case.name, case.kwargs)
    forloop, forloop_opt = run(case.name, {**case.kwargs, "foreach": False})
    lr = opt.param_groups[0]["lr"]
    for a, b in zip(foreach, forloop, strict=True):
        if case.name in PATHS_DIFFER:  # each as torch's path of its kind
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)  # the same codecs and rule, tensor by tensor
    # and the fused kernel, where one steps the algorithm in one format a tensor
    if TABLE[case.name].fused and not TABLE[case.name].copies:
        fused_kwargs = {k: v for k, v in case.kwargs.items() if k != "foreach"}
        fused, fused_opt = run(case.name, {**fused_kwargs, "fused": True})
        assert fused_opt.execution_path() == "fused"
        for a, c in zip(foreach, fused, strict=True):
            assert (a - c).abs().max() <= 0.1 * lr
    for a, b in zip(foreach, forloop, strict=True):
        for key, value in opt.state[a].items():
            if case.name not in PATHS_DIFFER:
                assert torch.equal(value, forloop_opt.state[b][key]), key


# ------------------------------------------------------ non-finite values in 8-bit blocks
#: (adamkit optimizer, torch.optim twin, keyword arguments): each 8-bit codec on the path of an
#: update (exp_avg; exp_avg_sq; max_exp_avg_sq; Adamax's exp_inf).
BAD_INPUT_CASES = [
    ("Adam", "Adam", {}),
    ("Adam", "Adam", {"amsgrad": True}),
    ("Adamax", "Adamax", {}),
]
BAD_AT, BAD_STEPS = 2, 8  # the bad gradient arrives at step 2 of 8 (the codes have scales)


def _bad_gradient_run(
    opt_factory: Any,
    bad: dict[int, float],
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.optim.Optimizer, list[torch.Tensor]]:
    """A (64, 80) weight (20 blocks of 8-bit state) stepped BAD_STEPS times on heavy-tailed
    gradients, with the gradient elements ``bad`` (flat index: value) replaced at BAD_AT.
    Returns the parameter, the optimizer and the parameter after each step."""
    g = torch.Generator().manual_seed(21)
    p = torch.randn(64, 80, generator=g).to(device).requires_grad_()
    scale = torch.exp(torch.randn(64, 80, generator=g))
    opt = opt_factory([p])
    history = []
    for t in range(BAD_STEPS):
        grad = torch.randn(64, 80, generator=g) * scale
        if t == BAD_AT:
            for i, value in bad.items():
                grad.view(-1)[i] = value
        p.grad = grad.to(device)
        opt.step()
        history.append(p.detach().cpu().clone())
    return p.detach().cpu(), opt, history


def _on_path(path: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], str]:
    """The keyword arguments that put an optimizer on ``path``, and the parameters' device."""
    if path == "foreach":
        return {"foreach": True}, "cpu"
    if path == "fused":
        _kernel()
        return {"fused": True}, "cpu"
    return {"fused": True}, _triton_device(monkeypatch)


def _assert_ran_on(opt: torch.optim.Optimizer, path: str) -> None:
    plans = {
        type(entry[1]).__name__
        for _, entries in opt.__dict__.get("_fused_plans", {}).values()
        for entry in entries
    }
    assert plans == {"foreach": set(), "fused": {"FusedPlan"}, "triton": {"TritonPlan"}}[path]


PATHS = ["foreach", "fused", "triton"]
#: NaN, and infinities of both signs (in two blocks), in one step's gradient.
NON_FINITE = {"nan": {300: math.nan}, "inf": {300: math.inf, 700: -math.inf}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", list(NON_FINITE), ids=list(NON_FINITE))
@pytest.mark.parametrize(
    ("name", "torch_name", "kwargs"), BAD_INPUT_CASES, ids=["Adam", "AMSGrad", "Adamax"]
)
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # Triton's interpreter
def test_8bit_non_finite_gradient_stays_in_its_element(
    name: str,
    torch_name: str,
    kwargs: dict[str, Any],
    bad: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A NaN or infinite gradient element makes exactly its own parameter NaN, as in torch's
    fp32 optimizers (inf / inf in the update); the other elements of its 8-bit block go on as
    without it: within this file's 8-bit bound of the fp32 run, over the steps that follow."""
    where, device = _on_path(path, monkeypatch)
    lr = 1e-3
    ours, opt, _ = _bad_gradient_run(
        lambda ps: getattr(adamkit, name)(ps, lr=lr, state_precision="8bit", **where, **kwargs),
        NON_FINITE[bad],
        device,
    )
    _assert_ran_on(opt, path)
    theirs, reference, _ = _bad_gradient_run(
        lambda ps: getattr(torch.optim, torch_name)(ps, lr=lr, **kwargs), NON_FINITE[bad]
    )
    nan = torch.isnan(theirs)
    assert nan.view(-1).nonzero().view(-1).tolist() == sorted(NON_FINITE[bad])
    assert torch.equal(torch.isnan(ours), nan)
    deviation = (ours - theirs)[~nan].abs() / (lr * BAD_STEPS)
    assert deviation.max() <= 0.2 and deviation.mean() <= 0.01, (deviation.max(), deviation.mean())
    # Non-finite state where torch's is, and only there. (Adamax's exp_inf: where torch keeps
    # a NaN, the fused kernels' max(beta2 u, |g| + eps) takes |g| + eps again the step after.)
    entry = opt.state[opt.param_groups[0]["params"][0]]
    their_entry = next(iter(reference.state.values()))
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf"):
        if key in their_entry:
            non_finite = ~torch.isfinite(precision.decode(entry, key).cpu())
            if key == "exp_inf" and path != "foreach":
                assert set(non_finite.view(-1).nonzero().view(-1).tolist()) <= set(NON_FINITE[bad])
            else:
                assert torch.equal(non_finite, ~torch.isfinite(their_entry[key])), key


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_8bit_overflowing_second_moment_stays_in_its_element(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finite gradient element so large that (1 - beta2) g**2 overflows to inf, as it does in
    torch's fp32 Adam (which then stops moving that element: m / inf = 0). The element's
    exp_avg_sq is inf on its own: the block's other second moments keep to their fp32 values,
    and the block's other parameters keep moving. (Its exp_avg, 1e20, is still the largest of
    its block, whose other exp_avg round to 0 until it decays: they move with the current
    gradient's share of the moment only, so they are not held to the fp32 run here.)"""
    where, device = _on_path(path, monkeypatch)
    huge = {300: 1e21}
    ours, opt, history = _bad_gradient_run(
        lambda ps: adamkit.Adam(ps, state_precision="8bit", **where), huge, device
    )
    _assert_ran_on(opt, path)
    theirs, reference, their_history = _bad_gradient_run(lambda ps: torch.optim.Adam(ps), huge)
    their_v = next(iter(reference.state.values()))["exp_avg_sq"].view(-1)
    assert their_v.isinf().nonzero().view(-1).tolist() == [300]  # torch's overflowed too
    v = precision.decode(opt.state[opt.param_groups[0]["params"][0]], "exp_avg_sq").cpu().view(-1)
    assert v.isinf().nonzero().view(-1).tolist() == [300]
    block = torch.zeros(v.numel(), dtype=torch.bool)
    block[256:512] = True
    block[300] = False
    _assert_within_codec_error(v[block], their_v[block], 1 / 8)
    for before, after in zip(history[BAD_AT:], history[BAD_AT + 1 :], strict=False):
        assert (after.view(-1)[block] != before.view(-1)[block]).all()
    # The element itself stopped at the overflow, as torch's did (m / inf = 0).
    assert their_history[BAD_AT - 1].view(-1)[300] == theirs.view(-1)[300]
    assert history[BAD_AT - 1].view(-1)[300] == ours.view(-1)[300]


@pytest.mark.xfail(
    strict=True,
    reason="a finite outlier 1e19 times its neighbours is its 8-bit block's scale: the "
    "block's other moments round to 0 (exp_avg) and to 2**-31 of it (exp_avg_sq), so they "
    "stop moving until it decays; the block-wise format has no place for an outlier",
)
def test_8bit_huge_finite_gradient_leaves_its_block_close_to_fp32() -> None:
    huge = {300: 2e19}
    ours, _, _ = _bad_gradient_run(
        lambda ps: adamkit.Adam(ps, state_precision="8bit", foreach=True), huge
    )
    theirs, _, _ = _bad_gradient_run(lambda ps: torch.optim.Adam(ps), huge)
    deviation = (ours - theirs).abs() / (1e-3 * BAD_STEPS)
    assert deviation.max() <= 0.2 and deviation.mean() <= 0.01


# -------------------------------------------------------------------------- checkpoints
def _through_bytes(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("state_precision", ["bf16", "8bit"])
@pytest.mark.parametrize("path", [{"fused": True}, {"foreach": True}], ids=["fused", "foreach"])
@pytest.mark.parametrize("name", ["Adam", "NAdam", "Adamax"])
def test_checkpoint_is_compact_and_resumes_bit_for_bit(
    name: str, path: dict, state_precision: str
) -> None:
    kwargs = (
        {**path, "state_precision": state_precision, "amsgrad": True}
        if name == "Adam"
        else {
            **path,
            "state_precision": state_precision,
        }
    )
    ps = make_params()
    opt = getattr(adamkit, name)(ps, **kwargs)
    grads = grad_stream(ps, 40)
    for step_grads in grads[:20]:
        for p, g in zip(ps, step_grads, strict=True):
            p.grad = g
        opt.step()
    saved = _through_bytes(copy.deepcopy(opt.state_dict()))
    saved_params = [p.detach().clone() for p in ps]
    for key, value in saved["state"][0].items():  # the 64x80 weight: compact form
        assert value.dtype in (
            (torch.uint8, torch.float32)
            if state_precision == "8bit"
            else (torch.bfloat16, torch.float32)
        ), key
    for step_grads in grads[20:]:
        for p, g in zip(ps, step_grads, strict=True):
            p.grad = g
        opt.step()

    resumed = [p.clone().requires_grad_() for p in saved_params]
    again = getattr(adamkit, name)(resumed, **kwargs)
    again.load_state_dict(saved)
    for a, b in zip(again.state.values(), saved["state"].values(), strict=True):
        b = live_entry(b)  # the saved layout names 8-bit codes `<moment>_codes`
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for step_grads in grads[20:]:
        for p, g in zip(resumed, step_grads, strict=True):
            p.grad = g
        again.step()
    for a, b in zip(ps, resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("fp32", "8bit"),
        ("fp32", "bf16"),
        ("8bit", "fp32"),
        ("bf16", "fp32"),
        ("8bit", "bf16"),
        ("bf16", "8bit"),
    ],
)
def test_checkpoints_convert_between_precisions(source: str, target: str) -> None:
    ps, opt = run("Adam", {"amsgrad": True, "state_precision": source}, steps=10)
    saved = _through_bytes(copy.deepcopy(opt.state_dict()))
    other = adamkit.Adam(
        [p.detach().clone().requires_grad_() for p in ps], amsgrad=True, state_precision=target
    )
    other.load_state_dict(saved)
    assert other.param_groups[0]["state_precision"] == target  # the live optimizer's storage
    for (p, theirs), ours in zip(opt.state.items(), other.state.values(), strict=True):
        fmt = precision.state_format(p, target)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            original = precision.decode(theirs, key).float()
            loaded = precision.decode(ours, key).float()
            assert (ours[key].dtype == torch.uint8) == (fmt == precision.Q8)
            assert (precision.scale_key(key) in ours) == (fmt == precision.Q8)
            if fmt == precision.NATIVE:
                assert torch.equal(loaded, original)  # widening is exact
            else:
                _assert_within_codec_error(
                    loaded, original, 2.0**-8 if target == "bf16" else 1 / 16
                )
    # And training goes on.
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()


def _assert_within_codec_error(
    loaded: torch.Tensor, original: torch.Tensor, relative: float
) -> None:
    """Within ``relative`` of each value, or (values far below their block's largest, which
    the 8-bit code rounds to zero or its lowest binade) within 2**-14 of the tensor's largest."""
    floor = 2.0**-14 * original.abs().max()
    assert ((loaded - original).abs() <= relative * original.abs() + floor).all()


def test_torch_checkpoint_loads_into_8bit_and_back() -> None:
    ps = make_params()
    theirs = torch.optim.Adam(ps, lr=1e-3)
    for grads in grad_stream(ps, 5):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g
        theirs.step()
    ours = adamkit.Adam([p.detach().clone().requires_grad_() for p in ps], state_precision="8bit")
    ours.load_state_dict(_through_bytes(theirs.state_dict()))
    assert ours.state[ours.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.uint8
    # Back to torch: through a full-precision adamkit optimizer, which decodes.
    full = adamkit.Adam([p.detach().clone().requires_grad_() for p in ps])
    full.load_state_dict(_through_bytes(ours.state_dict()))
    back = torch.optim.Adam([p.detach().clone().requires_grad_() for p in ps])
    back.load_state_dict(full.state_dict())
    for a, b in zip(back.state.values(), theirs.state.values(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            _assert_within_codec_error(a[key], b[key], 1 / 16)


def test_bad_8bit_state_is_refused_and_changes_nothing() -> None:
    _, opt = run("Adam", {"state_precision": "8bit"}, steps=3)
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    del bad["state"][0]["exp_avg_scale"]
    with pytest.raises(ValueError, match="8-bit codes but the entry has no 'exp_avg_scale'"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(before)
    bad["state"][0]["exp_avg_sq_scale"] = torch.ones(3)
    with pytest.raises(ValueError, match="should hold 20 block scales"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for a, b in zip(after["state"].values(), before["state"].values(), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_bad_arguments() -> None:
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(
        ValueError, match=r"state_precision='fp16' is invalid \(expected 'fp32', 'bf16' or '8bit'\)"
    ):
        adamkit.Adam(p, state_precision="fp16")
    with pytest.raises(TypeError, match="stochastic_rounding must be True or False, got str"):
        adamkit.AdamW(p, stochastic_rounding="yes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- memory report
@pytest.mark.parametrize(
    ("state_precision", "most"), [("fp32", 8.01), ("bf16", 4.01), ("8bit", 2.1)]
)
def test_state_memory(state_precision: str, most: float) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 512))
    opt = adamkit.Adam(model.parameters(), state_precision=state_precision)
    assert adamkit.state_memory(opt).total_bytes == 0  # no state before the first step
    model(torch.randn(4, 512)).sum().backward()
    opt.step()
    report = adamkit.state_memory(opt)
    assert report.params == 2 * (512 * 512 + 512)
    assert report.bytes_per_param <= most
    assert "bytes/param" in str(report)
    torch_opt = torch.optim.Adam(model.parameters())
    torch_opt.step()
    assert adamkit.state_memory(torch_opt).bytes_per_param > 8.0  # any torch optimizer


# ---------------------------------------------------------------- changing the settings
@pytest.mark.parametrize("path", [{"fused": True}, {"foreach": True}], ids=["fused", "foreach"])
def test_state_keeps_its_format_when_the_group_setting_changes(path: dict) -> None:
    ps = make_params()
    opt = adamkit.Adam(ps, state_precision="bf16", **path)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.param_groups[0]["state_precision"] = "8bit"  # existing state stays bf16
    ps[1].grad = None  # a different set of parameters: the fused plan is rebuilt
    opt.step()
    assert all(opt.state[p]["exp_avg"].dtype == torch.bfloat16 for p in ps)
    late = torch.zeros(64, 80, requires_grad=True)
    opt.add_param_group({"params": [late], "state_precision": "8bit"})
    late.grad = torch.ones_like(late)
    opt.step()
    assert opt.state[late]["exp_avg"].dtype == torch.uint8  # new state takes the new setting
    # A checkpoint converts: load it back and everything is 8-bit where the size allows.
    opt.load_state_dict(opt.state_dict())
    assert opt.state[ps[0]]["exp_avg"].dtype == torch.uint8


@pytest.mark.parametrize("path", [{}, {"foreach": True}], ids=["default", "foreach"])
def test_turning_stochastic_rounding_off_takes_effect(path: dict) -> None:
    # By default the kernel steps these bf16 parameters while they round stochastically; after
    # the switch they step as torch's do (foreach): the cached kernel plan must not survive.
    def final(steps: int, switch_at: int | None) -> torch.Tensor:
        p = torch.ones(20_000, dtype=torch.bfloat16, requires_grad=True)
        opt = adamkit.Adam([p], lr=1e-4, stochastic_rounding=True, **path)
        for step in range(steps):
            if step == switch_at:
                opt.param_groups[0]["stochastic_rounding"] = False
            p.grad = torch.ones_like(p)
            opt.step()
        return p.detach().clone()

    # After the switch, updates of lr = 1e-4 round back to the same bf16 value: nothing moves,
    # so 10 stochastic steps then 10 rounded to nearest end where 10 stochastic steps end.
    ten = final(10, None)
    assert not torch.equal(ten, torch.ones_like(ten))
    assert torch.equal(final(20, 10), ten)
