"""Adafactor beyond the registry (which holds every path equal to torch.optim.Adafactor and to
the NumPy reference, checkpoints exchanged both ways): longer runs on more shapes, the memory
it keeps, its own bad input, bf16 parameters, and its telemetry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import adamkit
from adamkit import reference

from .artifacts import assert_real_png

SHAPES = [(17, 9), (3, 5, 4), (2, 1, 6, 7), (33,), (), (1, 40), (40, 1)]
ODD = {"lr": 3e-2, "beta2_decay": -0.6, "eps": (1e-5, 1e-2), "d": 1.3, "weight_decay": 0.05}


def _run(cls: Any, dtype: torch.dtype, steps: int, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, dtype=dtype, generator=g).requires_grad_() for s in SHAPES]
    opt = cls(ps, **kwargs)
    for t in range(steps):
        for i, p in enumerate(ps):
            # Gradients of very different sizes (eps1 binds on the small ones), some skipped.
            scale = 10.0 ** ((i % 4) - 3)
            grad = torch.randn(p.shape, dtype=dtype, generator=g) * scale
            p.grad = None if (i == 3 and t % 5 == 4) else grad
        opt.step()
    return opt, ps


@pytest.mark.parametrize(
    "kwargs", [{}, ODD, {**ODD, "maximize": True}], ids=["default", "odd", "max"]
)
@pytest.mark.parametrize("path", ["foreach", "forloop", "fused"])
def test_equals_torch_over_300_steps_on_every_shape(kwargs: dict, path: str) -> None:
    """4-d and degenerate (1 x n, n x 1) matrices factored over their last two dimensions, a
    vector, a scalar, a tensor that skips steps, gradients small enough for eps1 to bind: equal
    to torch within rounding, state included (adamkit takes the mean squares as means of g^2
    where torch squares a norm, and applies a matrix's update in factored form: the last bits
    differ, and 300 steps of a relative step size carry them along). The fused path's C
    kernel steps the matrices (the vector and the scalar take the multi-tensor ops)."""
    foreach = path == "foreach"
    execution = {"fused": True} if path == "fused" else {"foreach": foreach}
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        ours, ps = _run(adamkit.Adafactor, dtype, 300, **execution, **kwargs)
        theirs, qs = _run(torch.optim.Adafactor, dtype, 300, foreach=foreach, **kwargs)
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)
            assert sorted(ours.state[p]) == sorted(theirs.state[q])
            for key, value in ours.state[p].items():
                torch.testing.assert_close(value, theirs.state[q][key], rtol=tol, atol=tol * 1e-3)


def test_the_reference_is_the_paper_s_factored_estimate() -> None:
    """With beta2 = 0 (beta2_decay so that 1 - beta2_1 = 1) the estimate is the rank-1
    factorisation of G^2 of the paper's Algorithm 4, ``V = R C / sum(R)`` with sums (torch's
    means give the same ratio): checked on a gradient whose square is exactly rank 1."""
    row, col = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 4.0])
    grad = (row[:, None] * col[None, :]).sqrt().numpy()  # G^2 = row col^T
    x = torch.ones(3, 2).numpy()
    _, state = reference.adafactor(x, grad, lr=1.0, eps=(0.0, 1e-3))
    v_hat = state["row_var"] * state["col_var"] / state["row_var"].mean()
    assert v_hat == pytest.approx(grad**2)


def test_state_is_sublinear_in_a_matrix_s_size() -> None:
    """A (1024, 512) matrix keeps 1024 + 512 numbers, a bias its 512; against Adam's 2 per
    element."""
    model = torch.nn.Linear(1024, 512)
    opt = adamkit.Adafactor(model.parameters())
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()
    state = opt.state[model.weight]
    assert state["row_var"].shape == (512, 1) and state["col_var"].shape == (1, 1024)
    memory = adamkit.state_memory(opt)
    floats = 512 + 1024 + 512  # row_var, col_var of the weight; the bias's variance
    assert memory.total_bytes == 4 * floats + 2 * 4  # and two step counters
    assert memory.bytes_per_param < 0.02  # Adam: 8


def test_bf16_parameters_round_stochastically_and_keep_bf16_state() -> None:
    """As torch: bf16 state for bf16 parameters; eps1 = None is bf16's machine epsilon also
    when the step runs on fp32 copies (stochastic rounding), so both modes agree on average."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(64, 32, generator=g)
    finals = []
    for stochastic in (False, True):
        p = start.bfloat16().requires_grad_()
        opt = adamkit.Adafactor([p], lr=1e-2, stochastic_rounding=stochastic)
        for _ in range(20):
            p.grad = (torch.randn(64, 32, generator=g) * 1e-3).bfloat16()
            opt.step()
        assert opt.state[p]["row_var"].dtype == torch.bfloat16
        finals.append(p.detach().float())
    assert not torch.equal(finals[0], finals[1])  # the stochastic run rounded differently
    assert (finals[0] - finals[1]).abs().mean() < 0.02


def _make(**kwargs: Any) -> Any:
    return lambda: adamkit.Adafactor([torch.randn(3, 3, requires_grad=True)], **kwargs)


def _complex_at_the_step() -> None:
    p = torch.randn(3, requires_grad=True)
    opt = adamkit.Adafactor([p])
    p.data = torch.randn(3, dtype=torch.complex64)
    p.grad = torch.randn(3, dtype=torch.complex64)
    opt.step()


def _changed_by_hand(key: str, value: Any) -> None:
    """Two groups; the second's ``key`` changed by hand: refused before the first steps."""
    p, q = torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    opt = adamkit.Adafactor([{"params": [p]}, {"params": [q]}])
    opt.param_groups[1][key] = value
    p.grad, q.grad = torch.randn(4, 3), torch.randn(5)
    try:
        opt.step()
    finally:
        assert not opt.state[p]  # the first group did not step


def _complex_step() -> None:
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = adamkit.Adafactor([p])  # constructed, as torch's: its step refuses
    p.grad = torch.randn_like(p)
    opt.step()


def _fused_refused(change: str) -> None:
    """fused=True with a matrix the kernel cannot take: refused before any tensor steps (a
    vector, a matrix it takes, in an earlier group), the step counters included."""
    vector = torch.randn(5, requires_grad=True)
    taken = torch.randn(4, 3, requires_grad=True)
    refused = torch.randn(4, 3, requires_grad=True)
    opt = adamkit.Adafactor([{"params": [vector, taken]}, {"params": [refused]}], fused=True)
    vector.grad, taken.grad, refused.grad = torch.randn(5), torch.randn(4, 3), torch.randn(4, 3)
    opt.step()
    if change == "transposed gradient":
        refused.grad = torch.randn(3, 4).t()
    else:  # its column statistics a view of the parameter
        opt.state[refused]["col_var"] = refused.detach().view(-1)[:3].view(1, 3)
    before = [t.detach().clone() for t in (vector, taken)]
    try:
        opt.step()
    finally:
        assert all(torch.equal(t, b) for t, b in zip((vector, taken), before, strict=True))
        assert all(float(s["step"]) == 1 for s in opt.state.values())


def _resized() -> None:
    p = torch.randn(4, 3, requires_grad=True)
    opt = adamkit.Adafactor([p])
    p.grad = torch.randn(4, 3)
    opt.step()
    p.data = torch.randn(12)
    p.grad = torch.randn(12)
    opt.step()


#: Adafactor's own bad input (docs/bad-input.md has a section of them).
BAD_ADAFACTOR: list[tuple[str, Any, type[Exception], str]] = [
    ("Adafactor(params, eps=1e-3)", _make(eps=1e-3), TypeError, r"eps must be a pair"),
    (
        "Adafactor(params, eps=(-1.0, 1e-3))",
        _make(eps=(-1.0, 1e-3)),
        ValueError,
        r"epsilon1 should be >= 0 but is: -1\.0",
    ),
    (
        "Adafactor(params, eps=(None, nan))",
        _make(eps=(None, float("nan"))),
        ValueError,
        r"epsilon2 should be >= 0 but is: nan",
    ),
    (
        "Adafactor(params, eps=('a', 1e-3))",
        _make(eps=("a", 1e-3)),
        TypeError,
        r"eps\[0\] must be a float .* got str",
    ),
    (
        "Adafactor(params, beta2_decay=0.5)",
        _make(beta2_decay=0.5),
        ValueError,
        r"beta2_decay should be <= 0 but is: 0\.5 .*<= 0",
    ),
    (
        "Adafactor(params, d=0.5)",
        _make(d=0.5),
        ValueError,
        r"Clipping threshold d should be >= 1 but is: 0\.5 .*>= 1",
    ),
    (
        "Adafactor(params, d=nan)",
        _make(d=float("nan")),
        ValueError,
        r"Clipping threshold d should be >= 1 but is: nan",
    ),
    (
        "group['eps'] = 1e-3 (by hand); step()",
        lambda: _changed_by_hand("eps", 1e-3),
        TypeError,
        r"param group 1: eps must be a pair \(eps1 or None, eps2\), got 0\.001",
    ),
    (
        "Adafactor([matrices], fused=True); state['col_var'] = a view of its parameter; step()",
        lambda: _fused_refused("statistics viewing the parameter"),
        RuntimeError,
        r"adamkit.Adafactor\(fused=True\): parameter #0 of param group 1: the parameter, its "
        r"gradient and its statistics overlap in memory; leave fused=None",
    ),
    (
        "Adafactor([matrices], fused=True); a transposed gradient; step()",
        lambda: _fused_refused("transposed gradient"),
        RuntimeError,
        r"adamkit.Adafactor\(fused=True\): parameter #0 of param group 1: the fused kernel "
        r"needs contiguous tensors",
    ),
    (
        "Adafactor([complex parameter]).step()  (refused at the step, as torch)",
        _complex_step,
        RuntimeError,
        r"^Adafactor does not support complex parameters \(parameter #0 of param group 0 is",
    ),
    (
        "p.data = complex tensor; step()",
        _complex_at_the_step,
        RuntimeError,
        r"parameter #0 of param group 0 is torch.complex64",
    ),
    (
        "p.data = torch.randn(12) (was 4 x 3); step()",
        _resized,
        RuntimeError,
        r"was the parameter replaced or resized",
    ),
]


@pytest.mark.parametrize(
    ("code", "call", "error", "message"), BAD_ADAFACTOR, ids=[r[0] for r in BAD_ADAFACTOR]
)
def test_bad_input_is_named(code: str, call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_a_value_changed_by_hand_is_refused_before_the_step() -> None:
    p = torch.randn(4, 3, requires_grad=True)
    opt = adamkit.Adafactor([p])
    opt.param_groups[0]["beta2_decay"] = 0.5
    p.grad = torch.randn(4, 3)
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"param group 0: beta2_decay should be <= 0 but is: 0\.5"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_a_checkpoint_of_another_optimizer_or_shape_is_refused_and_changes_nothing() -> None:
    p = torch.randn(6, 4, requires_grad=True)
    adam = torch.optim.Adam([p])
    p.grad = torch.randn(6, 4)
    adam.step()
    opt = adamkit.Adafactor([p.detach().clone().requires_grad_()])
    with pytest.raises(ValueError, match=r"its state lacks \['row_var', 'col_var'\]"):
        opt.load_state_dict(adam.state_dict())
    assert opt.state_dict()["state"] == {}
    other = torch.optim.Adafactor([torch.randn(4, 6, requires_grad=True)])
    other.param_groups[0]["params"][0].grad = torch.randn(4, 6)
    other.step()
    with pytest.raises(ValueError, match=r"state 'row_var' has shape \(4, 1\), it should have"):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize(
    "cls", [adamkit.Adafactor, torch.optim.Adafactor], ids=["adamkit", "torch"]
)
def test_telemetry_records_the_relative_step_and_the_clipping(tmp_path: Path, cls: Any) -> None:
    """rho_t = min(lr, 1/sqrt(t)): 1 / sqrt(t) until it falls below lr; the update's RMS is
    clipped to d, hardest at the first step (where beta2_1 = 0 and |U| = 1 everywhere but
    where eps1 binds, so d = 1 never clips it and d > 1 neither)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = cls(model.parameters(), lr=0.2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    with adamkit.Telemetry(opt, tmp_path / "adafactor.jsonl") as telemetry:
        for _ in range(40):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    steps = [r["relative_step"] for r in telemetry.records]
    assert steps[:3] == pytest.approx([0.2, 0.2, 0.2])  # lr caps 1/sqrt(t) up to t = 25
    assert steps[-1] == pytest.approx(1 / 40**0.5)
    factors = [r["clip_factor"] for r in telemetry.records]
    assert all(0 < f <= 1 for f in factors) and min(factors) < 1  # some steps were clipped
    assert_real_png(adamkit.plot_telemetry(tmp_path / "adafactor.jsonl", tmp_path / "a.png"))


def test_d_inf_turns_the_clipping_off_as_in_torch() -> None:
    _, ps = _run(adamkit.Adafactor, torch.float64, 30, d=float("inf"))
    _, qs = _run(torch.optim.Adafactor, torch.float64, 30, d=float("inf"))
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def _extreme_rows(dtype: torch.dtype, big: float, small: float, rows: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    grad = torch.randn(rows, 32, generator=g) * big
    grad[3] = torch.randn(32, generator=g) * small
    return grad.to(dtype)


@pytest.mark.parametrize(
    ("dtype", "big", "small", "eps"),
    [
        (torch.float16, 20.0, 2e-3, (None, 1e-3)),  # a row's R / mean(R) underflows fp16
        (torch.float32, 1e8, 1e-16, (0.0, 1e-3)),  # ... and fp32's normal range
    ],
    ids=["fp16", "fp32"],
)
def test_statistics_spanning_the_dtype_s_range_step_as_the_reference(
    dtype: torch.dtype, big: float, small: float, eps: tuple
) -> None:
    """The factored form's row factor rsqrt(R / mean(R)) is taken in fp32 at least, and
    torch's form is taken where it would leave its range: no NaN or infinite rows (the first
    version gave fp16 a NaN row), and the reference's step within the dtype's rounding.
    (torch's own fp16 step is no yardstick here: its ``R C`` overflows fp16 at |g| ~ 16, and
    those elements stop moving.)"""
    p = torch.randn(64, 32).to(dtype).requires_grad_()
    ours = adamkit.Adafactor([p], eps=eps)
    theta, state = p.detach().double().numpy(), None
    eps1 = torch.finfo(dtype).eps if eps[0] is None else eps[0]
    for _ in range(3):
        grad = _extreme_rows(dtype, big, small)
        p.grad = grad.clone()
        ours.step()
        theta, state = reference.adafactor(theta, grad.double().numpy(), state, eps=(eps1, eps[1]))
    assert torch.isfinite(p).all()
    tol = 2e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(p.double(), torch.from_numpy(theta), rtol=tol, atol=tol)


def test_a_checkpoint_entry_with_states_its_shape_does_not_keep_is_refused() -> None:
    p = torch.randn(4, 3, requires_grad=True)
    opt = adamkit.Adafactor([p])
    p.grad = torch.randn(4, 3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][0]["variance"] = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"its state has \['variance'\], which a parameter of"):
        adamkit.Adafactor([p.detach().clone().requires_grad_()]).load_state_dict(saved)


def test_telemetry_leaves_other_packages_adafactor_alone(tmp_path: Path) -> None:
    """transformers' and timm's classes are also named Adafactor, with other state: no
    Adafactor fields for them, and no failure after their step."""

    class Adafactor(torch.optim.SGD):  # a stand-in with the name and none of the state
        pass

    p = torch.randn(3, 2, requires_grad=True)
    opt = Adafactor([p], lr=0.1)
    with adamkit.Telemetry(opt, tmp_path / "t.jsonl") as telemetry:
        p.grad = torch.ones(3, 2)
        opt.step()
    assert telemetry.records[0]["relative_step"] is None


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_statistics_of_degenerate_matrices_stay_full_precision(precision: str) -> None:
    """A (1, n) parameter's col_var, an (n, 1) one's row_var and a ViT class token's
    (1, 1, 768) are shaped like the parameter, but are statistics: full precision, no block
    scales, whatever state_precision (the first version coded them, and then failed)."""
    shapes = [(1, 8192), (8192, 1), (1, 1, 768), (5000,)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = adamkit.Adafactor(ps, state_precision=precision)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape)
        opt.step()
    for p in ps[:3]:
        entry = opt.state[p]
        assert {entry[k].dtype for k in ("row_var", "col_var")} == {torch.float32}
        assert not any(k.endswith("_scale") for k in entry)
    coded = torch.bfloat16 if precision == "bf16" else torch.uint8
    assert opt.state[ps[3]]["variance"].dtype == coded
    # A torch checkpoint of them loads into a low-precision optimizer the same way.
    theirs = torch.optim.Adafactor([p.detach().clone().requires_grad_() for p in ps])
    for p in theirs.param_groups[0]["params"]:
        p.grad = torch.randn(p.shape)
    theirs.step()
    again = adamkit.Adafactor(
        [p.detach().clone().requires_grad_() for p in ps], state_precision=precision
    )
    again.load_state_dict(theirs.state_dict())
    for p in again.param_groups[0]["params"][:3]:
        assert again.state[p]["col_var"].dtype == torch.float32


def test_telemetry_decodes_low_precision_variance(tmp_path: Path) -> None:
    """Its clip factor reads the state decoded (8-bit codes failed the step's hook)."""
    factors = []
    for precision in ("fp32", "8bit"):
        torch.manual_seed(0)
        p = torch.randn(6000, requires_grad=True)
        opt = adamkit.Adafactor([p], state_precision=precision)
        with adamkit.Telemetry(opt, tmp_path / f"{precision}.jsonl") as telemetry:
            for _ in range(3):
                p.grad = torch.randn(6000)
                opt.step()
        factors.append(telemetry.records[-1]["clip_factor"])
    assert factors[1] == pytest.approx(factors[0], rel=0.02)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
def test_bf16_vectors_equal_torch_bit_for_bit(foreach: bool) -> None:
    """Vectors take torch's operations on each path (the multi-tensor path scales the update
    and adds it, the for-loop adds it with alpha): bf16 rounds the same."""
    g = torch.Generator().manual_seed(4)
    ps = [torch.randn(n, generator=g).bfloat16().requires_grad_() for n in (5000, 33, 1)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = adamkit.Adafactor(ps, foreach=foreach, weight_decay=0.1)
    theirs = torch.optim.Adafactor(qs, foreach=foreach, weight_decay=0.1)
    for _ in range(50):
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(p.shape, generator=g).bfloat16()
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(ours.state[p]["variance"], theirs.state[q]["variance"])


@pytest.mark.parametrize("shape", [(300, 16), (3, 100, 16)], ids=["matrix", "batched"])
def test_rows_the_floor_binds_take_torch_s_form_the_others_the_factored_one(
    shape: tuple[int, ...],
) -> None:
    """An embedding table whose unseen tokens have zero rows: those rows' R_i is 0, where the
    eps1^2 floor binds; they take torch's estimate, the other rows the factored form (a
    batched tensor with such a row takes torch's form whole). Equal to torch within rounding,
    state included, in fp64 and fp32."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(6)
        p = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
        q = p.detach().clone().requires_grad_()
        ours, theirs = adamkit.Adafactor([p]), torch.optim.Adafactor([q])
        for _ in range(20):
            grad = torch.randn(shape, generator=g, dtype=dtype)
            grad[..., : shape[-2] // 2, :] = 0  # half the rows never seen
            grad[..., torch.rand(shape[-2], generator=g) < 0.5, :] = 0  # others now and then
            p.grad, q.grad = grad, grad.clone()
            ours.step()
            theirs.step()
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
        for key in ("row_var", "col_var"):
            torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], rtol=tol, atol=tol)


# ---------------------------------------------------------------- the fused path's C kernel
def _twins(shape: tuple[int, ...], dtype: torch.dtype, **kwargs: Any) -> tuple[Any, Any, Any, Any]:
    g = torch.Generator().manual_seed(1)
    p = torch.randn(shape, dtype=dtype, generator=g).requires_grad_()
    q = p.detach().clone().requires_grad_()
    return p, q, adamkit.Adafactor([p], fused=True, **kwargs), torch.optim.Adafactor([q], **kwargs)


@pytest.mark.parametrize(
    "shape",
    [(300, 5000), (9000, 40), (3, 70, 90), (16, 8, 3, 3), (1, 9000), (9000, 1)],
    ids=["row-tiles", "narrow-row-tiles", "batched", "conv-kernels", "1xn", "nx1"],
)
def test_the_kernel_equals_torch_on_tiled_matrices_with_rows_the_floor_binds(
    shape: tuple[int, ...],
) -> None:
    """Matrices of several tiles of rows (the kernel sums each tile apart), batched ones of a
    tile each (a tile's sums and factors stay in its thread's scratch), degenerate ones; a
    third of the rows with no gradient (torch's estimate floors them at eps1^2, the kernel's
    factors take the minimum); weight decay, clipping (d = 1 binds at the first steps): equal
    to torch within rounding in float64, state included, over 30 steps."""
    kwargs = {"weight_decay": 0.1, "lr": 0.05}
    p, q, ours, theirs = _twins(shape, torch.float64, **kwargs)
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        grad = torch.randn(shape, dtype=torch.float64, generator=g)
        grad[..., ::3, :] = 0
        p.grad, q.grad = grad, grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    for key in ("row_var", "col_var"):
        torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], rtol=1e-12, atol=0)


def test_the_kernel_is_closer_to_float64_than_torch_s_float32_step() -> None:
    """In float32 the kernel sums in double (torch in float32): its step is nearer the float64
    one than torch's own float32 step, here by several times."""
    shape = (1000, 3000)
    g = torch.Generator().manual_seed(3)
    start = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g)
    results = {}
    for name, cls, dtype, kw in [
        ("kernel", adamkit.Adafactor, torch.float32, {"fused": True}),
        ("torch32", torch.optim.Adafactor, torch.float32, {}),
        ("torch64", torch.optim.Adafactor, torch.float64, {"eps": (1.1920928955078125e-07, 1e-3)}),
    ]:
        p = start.to(dtype, copy=True).requires_grad_()
        opt = cls([p], **kw)
        for _ in range(3):
            p.grad = grad.to(dtype)
            opt.step()
        results[name] = p.detach().double()
    moved = (results["torch64"] - start.double()).abs().max()
    ours = (results["kernel"] - results["torch64"]).abs().max() / moved
    torch32 = (results["torch32"] - results["torch64"]).abs().max() / moved
    assert ours < 2e-5 and ours <= torch32


def test_the_kernel_steps_the_same_with_any_number_of_threads() -> None:
    """Each tile's sums are kept apart and added in tile order: one thread and two give the
    same bits (a matrix large enough for two threads)."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            p, _, ours, _ = _twins((600, 1200), torch.float32)
            for seed in range(3):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
                ours.step()
            results.append((p.detach().clone(), ours.state[p]["row_var"].clone()))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_the_kernel_is_the_default_and_steps_every_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default (fused=None, foreach=None) CPU matrices (fp32 here) take the kernel
    (counted by a spy around the real call), vectors the multi-tensor ops; the kernel's result
    is within rounding of the multi-tensor path's."""
    from adamkit.optim import adafactor

    calls: list[tuple[int, ...]] = []

    def spy(p: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        calls.append(tuple(p.shape))
        factored(p, *args, **kwargs)

    factored = adafactor.factored_step
    monkeypatch.setattr(adafactor, "factored_step", spy)
    shapes = [(20, 30), (4,), (2, 3, 5)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours, eager = adamkit.Adafactor(ps), adamkit.Adafactor(qs, foreach=True)
    assert ours.execution_path() == "fused"
    for _ in range(5):
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        ours.step()
        eager.step()
    assert calls == [(20, 30), (2, 3, 5)] * 5
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=2e-6)


def _canary_case(change: str) -> tuple[torch.Tensor, Any, str]:
    torch.manual_seed(0)
    p = torch.randn(8, 6, requires_grad=True)
    opt = adamkit.Adafactor([p])
    p.grad = torch.randn(8, 6)
    opt.step()
    state = opt.state[p]
    if change == "strided gradient":
        p.grad = torch.randn(6, 8).t()
    elif change == "statistics of another dtype":
        state["row_var"] = state["row_var"].double()
    elif change == "statistics viewing the parameter":
        state["col_var"] = p.detach().view(-1)[:6].view(1, 6)
    elif change == "strided statistics":
        state["row_var"] = torch.rand(8, 2)[:, :1]
    return p, opt, change


@pytest.mark.parametrize(
    "change",
    [
        "strided gradient",
        "statistics of another dtype",
        "statistics viewing the parameter",
        "strided statistics",
    ],
)
def test_tensors_the_kernel_cannot_take_take_torch_s_ops_or_are_refused(change: str) -> None:
    """The kernel is handed only tensors checked at the call: those it cannot take step on
    torch's operations by default (as the multi-tensor path, bit for bit), and are refused,
    naming why, with fused=True."""
    p, opt, _ = _canary_case(change)
    q, twin, _ = _canary_case(change)
    twin.param_groups[0]["fused"], twin.param_groups[0]["foreach"] = False, True
    q.grad = p.grad.clone()
    if change == "statistics of another dtype":  # as torch: the multi-tensor step fails too
        with pytest.raises(RuntimeError):
            opt.step()
        return
    opt.step()
    twin.step()
    assert torch.equal(p, q)
    r, strict, _ = _canary_case(change)
    strict.param_groups[0]["fused"] = True
    before = r.detach().clone()
    with pytest.raises(RuntimeError, match=r"Adafactor\(fused=True\): parameter #0 .*: the "):
        strict.step()
    assert torch.equal(r, before)


def test_a_parameter_past_the_end_of_its_storage_is_refused() -> None:
    p = torch.randn(8, 6, requires_grad=True)
    opt = adamkit.Adafactor([p])
    p.grad = torch.randn(8, 6)
    opt.step()
    opt.state[p]["col_var"].untyped_storage().resize_(8)
    with pytest.raises(RuntimeError, match="past the end of its storage"):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_kernel_steps_half_matrices_rounding_each_result_once(dtype: torch.dtype) -> None:
    """bf16 and fp16 matrices are read into fp32 and each result (the statistics at their EMA,
    the parameter at its update) rounded to nearest once, where torch's operations round each
    of theirs: after 20 steps the kernel's parameters are nearer torch's float64 run than torch's
    own run in that dtype, and the statistics stay in the parameters' dtype, as torch's."""
    shape = (300, 500)
    g = torch.Generator().manual_seed(4)
    start = torch.randn(shape, generator=g)
    eps1 = torch.finfo(dtype).eps
    runs = {
        "kernel": (adamkit.Adafactor, dtype, {"fused": True}),
        "torch": (torch.optim.Adafactor, dtype, {}),
        "float64": (torch.optim.Adafactor, torch.float64, {"eps": (eps1, 1e-3)}),
    }
    params = {k: start.to(dt, copy=True).requires_grad_() for k, (_, dt, _) in runs.items()}
    opts = {k: cls([params[k]], weight_decay=0.1, **kw) for k, (cls, _, kw) in runs.items()}
    for _ in range(20):
        grad = torch.randn(shape, generator=g) * 0.1
        for k, p in params.items():
            p.grad = grad.to(p.dtype)
            opts[k].step()
    exact = params["float64"].detach()
    moved = (exact - start.double()).abs().max()
    error = {
        k: ((params[k].detach().double() - exact).abs().max() / moved).item()
        for k in ("kernel", "torch")
    }
    assert error["kernel"] < error["torch"], error
    assert opts["kernel"].state[params["kernel"]]["row_var"].dtype == dtype


def test_what_the_kernel_cannot_take_is_named() -> None:
    """The reasons name the tensor that is off the CPU, an inference tensor among the state
    (written in place: torch refuses that outside inference mode, so the kernel must not)."""
    from adamkit.optim._factored import factored_unsupported

    p, g = torch.randn(4, 3), torch.randn(4, 3)
    row, col = torch.rand(4, 1), torch.rand(1, 3)
    assert factored_unsupported(p, g, row, col) is None
    assert "not on meta" in str(factored_unsupported(p, g, row.to("meta"), col))
    with torch.inference_mode():
        frozen = torch.rand(1, 3)
    assert "inference tensor" in str(factored_unsupported(p, g, row, frozen))
    assert "inference tensor" not in str(factored_unsupported(p, g, row, col))


def test_a_matrix_of_a_few_rows_and_very_many_columns_takes_torch_s_ops() -> None:
    """The kernel's column sums of a one-tile matrix live in each thread's scratch, which may
    not exceed an eighth of the tensor (beyond a megabyte): a (1, 300000) matrix would need
    four times its size, so torch's operations step it (fused=True refuses it, saying why);
    a (64, 300000) one takes the kernel."""
    from adamkit.optim._factored import factored_unsupported

    def reason(n: int, m: int) -> str | None:
        p, g = torch.randn(n, m), torch.randn(n, m)
        return factored_unsupported(p, g, torch.rand(n, 1), torch.rand(1, m))

    assert "column sums would need more memory than an eighth" in str(reason(1, 300000))
    assert reason(64, 300000) is None and reason(1, 3000) is None
    p = torch.randn(1, 300000, requires_grad=True)
    opt = adamkit.Adafactor([p], fused=True)
    p.grad = torch.randn(1, 300000)
    with pytest.raises(RuntimeError, match="column sums would need more memory"):
        opt.step()


def test_parameters_on_no_cpu_do_not_report_the_fused_path() -> None:
    """The kernel of whole matrices runs on the CPU: a group with no CPU parameter is stepped by
    torch's operations, and says so."""
    opt = adamkit.Adafactor([torch.nn.Parameter(torch.randn(3, 3, device="meta"))])
    assert opt.execution_path() == "foreach"
    assert adamkit.Adafactor([torch.nn.Parameter(torch.randn(3, 3))]).execution_path() == "fused"


def test_an_expanded_state_tensor_is_not_taken_for_one_past_its_storage() -> None:
    """A stride-0 (expanded) statistic ends where its strides say, inside its one-element
    storage: torch's operations step it, and refuse it as torch does (an in-place write to
    overlapping memory), not as a tensor past the end of its storage."""
    p = torch.nn.Parameter(torch.randn(64, 48))
    opt = adamkit.Adafactor([p])
    p.grad = torch.randn(64, 48)
    opt.step()
    opt.state[p]["col_var"] = torch.rand(1, 1).expand(1, 48)
    p.grad = torch.randn(64, 48)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        opt.step()
