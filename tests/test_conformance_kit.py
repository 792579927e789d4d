"""``adamkit.testing``, the conformance kit: adamkit's classes and torch's pass it; optimizers
with one defect each fail exactly the check that covers the defect."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import adamkit
from adamkit.testing import CHECKS, check
from adamkit.testing.__main__ import main

from . import broken_optimizers as broken
from .registry import TABLE

#: Every algorithm with a torch.optim twin to be checked against.
FAMILY = [name for name, row in TABLE.items() if row.torch_twin]
CONFIGS = [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}]
FAST = [n for n in CHECKS if n not in ("compile", "fresh_process")]


@pytest.mark.parametrize("name", FAMILY)
def test_adamkit_passes_its_own_kit_against_torch(name: str) -> None:
    configs = [*CONFIGS, {"lr": 1e-2, "state_precision": "bf16"}]
    report = check(getattr(adamkit, name), CONFIGS, reference=getattr(torch.optim, name),
                   checks=FAST)  # fmt: skip
    report.assert_ok()
    # Every check runs, but complex parameters for an algorithm that refuses them (as torch).
    skipped = {r.check for r in report.results if r.status == "skip"}
    assert skipped == (set() if TABLE[name].complex else {"complex"})
    if "bf16" not in TABLE[name].precisions:
        return
    # bf16 state: its stochastic rounding is salted by the parameter's position in the
    # optimizer, so a late group or a real view rounds differently, and the moments are not
    # torch's fp32 ones; every other check holds, bit for bit where it asks.
    salted = ("reference", "add_param_group", "complex")
    low = check(getattr(adamkit, name), configs[2:], checks=[c for c in FAST if c not in salted])
    low.assert_ok()


@pytest.mark.parametrize("name", FAMILY)
def test_torch_passes_the_kit(name: str) -> None:
    report = check(getattr(torch.optim, name), CONFIGS[:1], checks=FAST)
    report.assert_ok()


def test_a_checkpoint_continues_in_another_process() -> None:
    check(
        adamkit.AdamW, [{"lr": 1e-2, "state_precision": "8bit"}], checks=["fresh_process"]
    ).assert_ok()
    report = check(broken.ForgetsStep, [{"lr": 1e-2}], checks=["fresh_process"])
    assert [r.status for r in report.results] == ["fail"]


@pytest.mark.parametrize(
    ("cls", "failing"),
    [
        (broken.ForgetsStep, {"state_dict_roundtrip", "serialization", "named_parameters"}),
        (broken.IgnoresClosure, {"closure", "hooks"}),  # hooks: super().step() runs them twice
        (broken.MovesWithoutGrad, {"closure", "no_grad_is_a_no_op", "bad_hyperparameters"}),
        (broken.Float32Momentum, {"closure", "dtype", "complex", "bad_hyperparameters"}),
        (broken.SlightlyOff, {"reference", "bad_hyperparameters"}),  # names eps=-0.999, not -1
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "",
)
def test_each_defect_fails_its_check_and_says_what_differs(cls: type, failing: set) -> None:
    reference = torch.optim.Adam if issubclass(cls, torch.optim.Adam) else None
    report = check(cls, [{"lr": 1e-2}], reference=reference, checks=FAST)
    assert {r.check for r in report.failures} == failing, report.table()
    assert not report.ok
    for failure in report.failures:
        assert failure.message  # what differs, never a bare "failed"
    with pytest.raises(AssertionError, match=sorted(failing)[0]):
        report.assert_ok()


def test_nondeterminism_is_caught_and_the_first_differing_tensor_named() -> None:
    report = check(broken.Noisy, [{"lr": 1e-2}], checks=["determinism"])
    (result,) = report.results
    assert result.status == "fail"
    assert result.message.startswith("two identical runs: params[0] differs first, max |diff|")


def test_bad_arguments_to_check_are_refused() -> None:
    with pytest.raises(TypeError, match=r"expected a torch\.optim\.Optimizer subclass"):
        check(torch.nn.Linear, [{}])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown checks \\['determinsm'\\]"):
        check(adamkit.Adam, checks=["determinsm"])


def test_the_command_line_writes_junit_and_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit, markdown = tmp_path / "report.xml", tmp_path / "report.md"
    code = main([
        "tests.broken_optimizers:SlightlyOff", "--config", json.dumps({"lr": 0.01}),
        "--reference", "torch.optim.Adam", "--checks", "determinism,reference",
        "--junit", str(junit), "--markdown", str(markdown),
    ])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "1 pass, 1 fail, 0 skip" in out and "FAIL reference" in out
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert '| reference | `{"lr": 0.01}` | fail |' in markdown.read_text()
    assert main(["torch.optim:Adam", "--checks", "determinism,closure"]) == 0


def test_the_kit_runs_on_other_packages_optimizers() -> None:
    """The kit takes optimizers it was not written for (findings: docs/conformance-findings.md,
    from conformance/third_party.py); the checks asserted here are the ones they pass."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    schedulefree = pytest.importorskip("schedulefree")

    class Train(schedulefree.AdamWScheduleFree):  # type: ignore[misc]
        def __init__(self, params, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(params, **kwargs)
            self.train()

    core = ["determinism", "state_dict_roundtrip", "hooks", "closure", "no_grad_is_a_no_op"]
    for cls in (pytorch_optimizer.Lion, Train):
        report = check(cls, [{"lr": 1e-3}], checks=[*core, "bad_hyperparameters"])
        assert [r.status for r in report.results[:-1]] == ["pass"] * len(core), report.table()
        assert report.results[-1].status == "fail"  # lr=-1: NegativeLRError / accepted
