"""``adamkit compare``: real training runs on the built-in tasks, the table, the plot, and the
errors for optimizers and schedules it cannot read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adamkit.tools.compare import compare, parse_optimizer

from .artifacts import assert_real_png, run


def test_regression_from_the_command_line(tmp_path: Path) -> None:
    png = tmp_path / "compare.png"
    result = run(
        [
            sys.executable,
            "-m",
            "adamkit",
            "compare",
            "--steps",
            "150",
            "-o",
            str(png),
            "Adam(lr=0.05)",
            "RAdam(lr=0.05) @ warmup(10) + cosine(140)",
            "torch.SGD(lr=0.05, momentum=0.9)",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| optimizer") and "max |param error|" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:5]] == [
        "Adam(lr=0.05)",
        "RAdam(lr=0.05) @ warmup(10) + cosine(140)",
        "torch.SGD(lr=0.05, momentum=0.9)",
    ]
    assert "150/150" in result.stderr  # the progress bars
    assert_real_png(png)


def test_digits_trains_to_a_useful_accuracy(tmp_path: Path) -> None:
    runs = compare(
        "digits",
        ["Adam(lr=3e-3)", "Adamax(lr=3e-3)"],
        steps=150,
        out=tmp_path / "d.png",
        progress=False,
    )
    for r in runs:
        assert r.losses[-1] < r.losses[0] / 3
        assert r.metric > 0.85  # test accuracy of the MLP after 150 mini-batches
    assert_real_png(tmp_path / "d.png")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Adamm(lr=1)", r"unknown optimizer 'Adamm'"),
        ("Adam(0.1)", r"write an optimizer as Name\(keyword=value"),
        ("Adam(lr=x)", r"optimizer arguments must be literals"),
        ("Adam(lr=0.1) @ cosin(10)", r"unknown schedule 'cosin'"),
        ("Adam(lr=", r"cannot read optimizer"),
    ],
)
def test_unreadable_optimizers_are_refused_before_training(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_optimizer(text)


def test_bad_task_and_cli_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'mnist'"):
        compare("mnist", ["Adam()"], out=None, progress=False)
    result = run([sys.executable, "-m", "adamkit", "compare", "Adamm()"], tmp_path)
    assert result.returncode == 2 and "unknown optimizer 'Adamm'" in result.stderr
