"""The main job (``adamkit tour``), the command line and every example script run for real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .artifacts import assert_real_png, run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TOUR_PLOTS = {
    "linear_regression.png",
    "radam.png",
    "weight_decay.png",
    "lambda_lr.png",
    "multiplicative_lr.png",
    "change_lr.png",
    "warmup_schedules.png",
}


def test_tour_runs_every_seed_section_and_writes_its_plots(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    result = run([sys.executable, "-m", "adamkit", "tour", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for section in range(1, 6):
        assert f"\n{section}. " in text
    # The fused kernel's square roots are correctly rounded; torch's eager sqrt is not on
    # every CPU (an Intel Xeon: one ulp off in 0.6% of elements; an AMD EPYC: never), so the
    # gap is 0 on some machines and a few float32 ulps of a and b over 400 steps on others.
    prefix = "torch.optim.Adam on the same run: largest difference over 400 iterations = "
    gap = next(line for line in text.splitlines() if line.startswith(prefix))
    assert float(gap.removeprefix(prefix).split()[0]) < 1e-4
    assert "converged after" in text and "b is nan" in text
    assert "momentum SGD (not rectified)" in text and "rectified Adam" in text
    assert "b_ridge ~ b_true * 2/(2 + wd)" in text and "2b/" not in text
    # change_lr.png draws the seed's restart at lr=120: the terminal shows it too
    assert "multiplicative(0.69) from lr=120\n  lr: 120, 82.8, 57.13" in text
    final = next(line for line in text.splitlines() if line.startswith("final: a = "))
    a, b = float(final.split()[3]), float(final.split()[8])
    assert abs(a - 2.4785694) < 0.05 and abs(b - 7.3256989) < 0.05
    assert {p.name for p in out.glob("*.png")} == TOUR_PLOTS
    for png in out.glob("*.png"):
        assert_real_png(png)


def test_cli_help_and_version(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "adamkit", "--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("adamkit ")
    result = run([sys.executable, "-m", "adamkit"], tmp_path)
    assert result.returncode == 2 and "tour" in result.stdout


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    result = run([sys.executable, str(script), str(png)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()
    if "plt.savefig" in script.read_text():
        assert_real_png(png)
        assert "plt.title(" in script.read_text()  # every plot says what it shows


@pytest.mark.parametrize(
    ("script", "module", "extra"),
    [
        ("08_lightning.py", "lightning", "lightning"),
        ("09_huggingface_trainer.py", "transformers", "hf"),
    ],
)
def test_an_example_without_its_package_says_what_to_install(
    script: str, module: str, extra: str, tmp_path: Path
) -> None:
    path = ROOT / "examples" / script
    hide = f"import sys, runpy; sys.modules[{module!r}] = None; "  # as if not installed
    result = run(
        [sys.executable, "-c", hide + f"runpy.run_path({str(path)!r}, run_name='__main__')"],
        tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"this example needs {module}: pip install 'adamkit[{extra}]'"
    assert f"pip install 'adamkit[{extra}]'" in path.read_text().split('"""')[1]


@pytest.mark.skipif(
    not os.environ.get("ADAMKIT_STRESS"),
    reason="set ADAMKIT_STRESS=N to start the FSDP2 example N times (about 9 s each)",
)
def test_the_fsdp2_example_exits_cleanly_every_time(tmp_path: Path) -> None:
    """Its exit once aborted in about 1 run of 20 (gloo's workers releasing tensors while the
    interpreter finalised): only repetition shows such a race. 60 runs passed after the fix."""
    runs = int(os.environ["ADAMKIT_STRESS"])
    for i in range(runs):
        result = run([sys.executable, str(ROOT / "examples" / "10_fsdp2_torchrun.py")], tmp_path)
        assert result.returncode == 0, f"run {i + 1} of {runs}:\n{result.stderr[-3000:]}"
        assert "terminate called" not in result.stderr


def test_make_demo_installs_only_what_the_tour_needs(tmp_path: Path) -> None:
    venv = f"VENV={tmp_path / 'venv'}"  # -n: print the commands of a fresh set-up, run none
    cpu = "https://download.pytorch.org/whl/cpu"
    demo = run(["make", "-n", "demo", venv, f"TORCH_INDEX={cpu}"], ROOT)
    assert demo.returncode == 0, demo.stderr
    assert f'"torch==2.13.0" --index-url {cpu}' in demo.stdout
    assert " -e .\n" in demo.stdout and "[dev]" not in demo.stdout and "triton" not in demo.stdout
    assert demo.stdout.count("==> [") == 3  # one line per step
    test = run(["make", "-n", "test", venv], ROOT)
    assert test.returncode == 0, test.stderr
    assert '-e ".[dev]"' in test.stdout and "--index-url" not in test.stdout
    assert "--durations=15" in test.stdout
