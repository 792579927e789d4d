"""The command line's papercuts, through its entry point (``adamkit.cli.main``, which the
``adamkit`` console script calls), in-process: what a new user types, what they read back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import adamkit
from adamkit.cli import main
from adamkit.schedules import SpecError
from adamkit.tools.compare import Run, _progress_label, convergence_warning
from tests.artifacts import assert_real_png


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's own errors and --help
        code = int(exit.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("lambda(1/t)", ["1 / t", "t=0", "division by zero"]),
        ("lambda(t ** 1000)", ["t ** 1000", "t=3", "overflows a float"]),
        ("lambda(log(t))", ["log(t)", "t=0", "domain"]),
        ("multiplicative(1 / (t - 2) ** 2)", ["1 / (t - 2) ** 2", "t=2", "division by zero"]),
        ("lambda(exp(t * 1000))", ["exp(t * 1000)", "t=1", "overflows a float"]),
    ],
)
def test_an_expression_that_cannot_be_evaluated_is_a_spec_error_at_its_step(
    spec: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["schedule", spec, "--steps", "5", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 2
    assert err.startswith("adamkit schedule: bad schedule spec: ")
    assert all(word in err for word in words), err
    assert "Traceback" not in err and not list(tmp_path.glob("*.png"))
    p = torch.zeros(2, requires_grad=True)
    optimizer = adamkit.AdamW([p])
    with pytest.raises(SpecError, match=r"cannot be evaluated at t="):
        scheduler = adamkit.Scheduler(optimizer, spec)
        for _ in range(5):
            optimizer.step()
            scheduler.step()


def test_a_huge_integer_power_is_refused_at_once_not_computed() -> None:
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"overflows a float"):
        adamkit.schedules.parse("lambda(t ** 1000000000)").values(3)
    assert time.perf_counter() - start < 5  # an exact int power took minutes


def test_a_negative_or_non_finite_lr_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for lr in ["-1", "nan", "inf"]:
        code, _, err = cli(
            ["schedule", "cosine(100)", "--lr", lr, "-o", str(tmp_path / "s.png")], capsys
        )
        assert code == 2 and "lr=" in err and "expected a finite number >= 0" in err, err
    code, _, err = cli(["schedule", "lambda(t - 5)", "-o", str(tmp_path / "s.png")], capsys)
    assert code == 2 and "multiplier -5.0 at step 0" in err
    assert not list(tmp_path.glob("*.png"))


def test_two_schedules_go_to_two_files_named_after_their_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    written = []
    for spec in ["lambda(0.67 ** epoch)", "multiplicative(0.69)"]:
        code, out, err = cli(["schedule", spec, "--lr", "100", "--steps", "10"], capsys)
        assert code == 0, err
        written.append(Path(out.strip().splitlines()[-1].removeprefix("wrote ")))
    assert [p.name for p in written] == [
        "schedule_lambda_0.67_epoch_fef29b.png",  # '**' is lost in the name: a hash keeps it
        "schedule_multiplicative_0.69.png",
    ]
    for path in written:
        assert path.is_absolute() and path.parent == tmp_path.resolve()
        assert_real_png(path)


def test_a_mistyped_flag_shows_the_subcommand_s_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["schedule", "cosine(100)", "--stpes", "10"], capsys)
    assert code == 2
    assert err.startswith("usage: adamkit schedule ")
    assert "unrecognized arguments: --stpes" in err
    code, _, err = cli(["compare", "Adam()", "--tsak", "digits"], capsys)
    assert code == 2 and err.startswith("usage: adamkit compare ")


def test_compare_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["compare", "--help"], capsys)
    assert code == 0
    assert "(default: regression)" in out and "(default: 300)" in out


def test_an_unknown_optimizer_is_named_once_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(["compare", "Adma()"], capsys)
    assert code == 2
    assert err.startswith("adamkit compare: unknown optimizer 'Adma' (did you mean 'Adam'?")
    assert "compare: compare:" not in err
    code, _, err = cli(["compare", "SGD(lr=0.1)"], capsys)
    assert "did you mean 'torch.SGD'?" in err


def test_compare_says_when_a_run_has_not_converged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_png = str(tmp_path / "c.png")
    code, out, err = cli(
        ["compare", "Adam()", "Adam(lr=0.1)", "--steps", "100", "-o", out_png], capsys
    )
    assert code == 0, err
    assert "Adam(): has not converged: the loss went from 54 to" in out
    assert "Adam(lr=0.1): has not converged" not in out
    assert convergence_warning(Run("x", [1.0, float("nan")])) == (
        "x: diverged (the loss is nan at the end); try a smaller lr"
    )
    assert convergence_warning(Run("x", [1.0, 0.4])) is None


def test_the_progress_label_never_cuts_a_schedule_spec() -> None:
    text = "AdamW(lr=3e-3, weight_decay=0.1) @ warmup(20) + cosine(180, floor=0.1)"
    assert _progress_label(text, 2, 3) == "run 2/3: AdamW(lr=3e-3, weight_decay=0.1) @ schedule"
    assert _progress_label("Adam() @ cosine(300)", 1, 1) == "Adam() @ cosine(300)"
    long = "AdamW(lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1, amsgrad=True)"
    assert _progress_label(long, 1, 1) == long[:47] + "…"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The matplotlib figures the code under test closes after saving them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[object] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig))[1])
    return figures


def test_telemetry_draws_a_zero_on_a_log_panel_as_a_gap(
    tmp_path: Path, drawn: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import math

    rows = [
        {"step": t, "group": 0, "lr": 0.1 * t, "grad_norm": 1.0, "skipped": t == 3,
         "update_ratio": 0.0 if t in (0, 3) else 1e-3 * (t + 1)}
        for t in range(6)
    ]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli(["plot-telemetry", str(path), "-o", str(tmp_path / "t.png")], capsys)
    assert code == 0, err
    (figure,) = drawn
    ratio_axes = figure.axes[2]  # type: ignore[attr-defined]
    assert ratio_axes.get_ylabel() == "update_ratio" and ratio_axes.get_yscale() == "log"
    y = list(ratio_axes.lines[0].get_ydata())
    assert math.isnan(y[0]) and math.isnan(y[3]) and y[1] == 2e-3
    assert_real_png(tmp_path / "t.png")


def test_compare_with_one_optimizer_has_a_legend_and_plain_ticks(
    tmp_path: Path, drawn: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    png = str(tmp_path / "c.png")
    code, _, err = cli(["compare", "Adam(lr=0.01)", "--steps", "100", "-o", png], capsys)
    assert code == 0, err
    (figure,) = drawn
    (axes,) = figure.axes  # type: ignore[attr-defined]
    figure.canvas.draw()  # type: ignore[attr-defined]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["Adam(lr=0.01)"]
    labels = [t.get_text() for t in axes.get_yticklabels(minor=True) + axes.get_yticklabels()]
    assert any(labels) and not any("10^" in label or "times" in label for label in labels), labels


def test_names_of_different_specs_differ_where_the_readable_part_is_alike() -> None:
    from adamkit.cli import schedule_png

    alike = ["lambda(0.5 ** t)", "lambda(0.5 * t)", "lambda(0.5 + t)"]
    assert len({schedule_png([s]) for s in alike}) == 3
    long = ["warmup(10) + " * 12 + end for end in ("cosine(100)", "cosine(200)", "linear(50)")]
    assert len({schedule_png([s]) for s in long}) == 3
    assert schedule_png(["cosine(100)"]) == "schedule_cosine_100.png"


def test_and_or_in_an_expression_are_python_s() -> None:
    values = adamkit.schedules.parse("lambda((t < 3) and 0.5 or 0.1)").values(5)
    assert values == [0.5, 0.5, 0.5, 0.1, 0.1]
    assert adamkit.schedules.parse("lambda(0.5 or 1)").values(1) == [0.5]


def test_an_expression_that_would_not_end_or_nests_too_deeply_is_refused() -> None:
    product = " * ".join(["floor(1e308)"] * 64)  # exact ints once grew without bound
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"overflows a float|is inf"):
        adamkit.schedules.parse(f"lambda({product})").values(2)
    assert time.perf_counter() - start < 5
    with pytest.raises(SpecError, match="nested too deeply"):
        adamkit.schedules.parse("lambda(t" + "+1" * 5000 + ")")


def test_output_paths_are_what_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(["schedule", "cosine(100)", "-o", "myplot"], capsys)
    assert code == 0 and out.strip().endswith(f"wrote {tmp_path.resolve() / 'myplot.png'}")
    assert_real_png(tmp_path / "myplot.png")
    for bad, words in [(str(tmp_path), "is a folder"), ("", "file name is empty")]:
        code, _, err = cli(["schedule", "cosine(100)", "-o", bad], capsys)
        assert code == 2 and words in err, err
    code, _, err = cli(["schedule", "cosine(100)", "-o", str(tmp_path / "no" / "x.png")], capsys)
    assert code == 0  # a missing folder is made
    code, _, err = cli(["schedule", "cosine(100)", "--steps", "2000000000"], capsys)
    assert code == 2 and "from 1 to 10,000,000" in err


def test_compare_refuses_a_bad_optimizer_before_training_any(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(["compare", "Adam(lr=0.1)", "Adam(foo=1)", "-o", ""], capsys)
    assert code == 2 and "Adam(foo=1)" in err and "unexpected keyword argument 'foo'" in err
    assert "run 1/2" not in out + err
    code, _, err = cli(["compare", "Adam(lr=0.1, capturable=True)"], capsys)
    assert code == 2 and "capturable=True is not supported yet" in err and "Traceback" not in err
