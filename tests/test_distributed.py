"""adamkit inside torch.distributed: real process groups (gloo on loopback, 2 processes).

One run of tests/distributed_worker.py (about 30 s) trains the same model under FSDP2 with every
optimizer in every state precision, under DDP and ZeRO, and through a resharded distributed
checkpoint; these tests compare what each process ended with against one
process training the unsharded model on the same global batches.

* FSDP2 parameters are DTensors; adamkit steps each process's shard (every rule is
  elementwise), with the fused kernel. fp32 matches the unsharded run to float rounding
  (gloo's reduce-scatter sums in another order: 1e-5). With 8-bit state each shard is cut into
  its own 256-element blocks, so the codes differ from the unsharded run's: the bound is the
  one of tests/test_precision.py against full precision (0.2 lr per step at most).
* DDP: every process ends with the same parameters, equal to the single-process run.
* torch.distributed.checkpoint: saved by 2 processes, resumed by 1, matches the uninterrupted
  run; 8-bit state is written decoded (its blocks belong to the writer's shards).
* ZeroRedundancyOptimizer with an adamkit class: each process owns whole parameters' state,
  so 8-bit blocks are those of the single-process run (a rare code flips with the all-reduce's
  rounding); ``consolidate_state_dict`` gathers a state dict that loads into a plain adamkit
  optimizer, and into a new ZeroRedundancyOptimizer, which resumes the run exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import adamkit

from .artifacts import run
from .distributed_worker import FSDP_CASES, SCHEDULE, label, make_model, train
from .registry import TABLE

ROOT = Path(__file__).resolve().parent.parent
LR = 1e-2

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch was built without torch.distributed"
)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    result = run([sys.executable, "-m", "tests.distributed_worker", str(out)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ranks(out_dir: Path) -> list[dict[str, Any]]:
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


#: How close a sharded run's parameter updates (final - initial) must be to the single-process
#: run's, relative to the largest update. Measured: fp32 2e-5 (float rounding), bf16 1.0% and
#: 8-bit 1.5% (their codecs on other block boundaries). A lost last step changes the update by
#: 16% (Adamax) to 72% (RAdam), so each bound catches it.
RELATIVE = {"fp32": 1e-3, "bf16": 0.02, "8bit": 0.1}


def assert_updates_close(
    got: list[torch.Tensor], want: list[torch.Tensor], relative: float
) -> None:
    initial = [p.detach() for p in make_model().parameters()]
    for g, w, start in zip(got, want, initial, strict=True):
        moved = (w - start).abs().max()
        assert moved > 0, "the reference run did not move this parameter"
        error = ((g - start) - (w - start)).abs().max()
        assert error <= relative * moved, f"update error {error:.3g} of {moved:.3g}"


def _single_process(optimizer: type[torch.optim.Optimizer], **kwargs: Any) -> list[torch.Tensor]:
    model = make_model()
    train(model, optimizer(model.parameters(), lr=LR, **kwargs), 0, 1)
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize(
    ("name", "kwargs", "precision"),
    FSDP_CASES,
    ids=[f"{label(name, kwargs)}-{precision}" for name, kwargs, precision in FSDP_CASES],
)
def test_fsdp2_matches_the_unsharded_run(
    ranks: list[dict[str, Any]], name: str, kwargs: dict[str, Any], precision: str
) -> None:
    key = f"fsdp2/{label(name, kwargs)}/{precision}"
    assert ranks[0][key]["path"] == ("fused" if TABLE[name].kinds else "foreach")
    assert "DTensor" in ranks[0][key]["state_types"]  # state sharded like the parameters
    for a, b in zip(ranks[0][key]["params"], ranks[1][key]["params"], strict=True):
        assert torch.equal(a, b)  # the gathered parameters agree across processes
    expected = _single_process(getattr(adamkit, name), state_precision=precision, **kwargs)
    assert_updates_close(ranks[0][key]["params"], expected, RELATIVE[precision])


def test_fsdp2_state_memory_counts_this_process_shards(ranks: list[dict[str, Any]]) -> None:
    memory = {p: ranks[0][f"fsdp2/AdamW/{p}"]["local_bytes_per_param"] for p in ("fp32", "bf16")}
    assert memory == {"fp32": pytest.approx(8.0, abs=0.05), "bf16": pytest.approx(4.0, abs=0.05)}
    assert ranks[0]["fsdp2/AdamW/8bit"]["local_bytes_per_param"] < 2.5  # biases stay fp32


@pytest.mark.parametrize("name", ["Adam", "Adafactor"])
def test_ddp_processes_agree_with_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    expected = _single_process(getattr(adamkit, name))
    key = f"ddp/{name}"
    for a, b, want in zip(ranks[0][key]["params"], ranks[1][key]["params"], expected, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("cautious", "cautious=True on sharded parameters"),
        ("Adafactor", "adamkit.Adafactor on sharded parameters (FSDP2, tensor parallel"),
    ],
)
def test_whole_tensor_steps_on_shards_are_refused_before_any_change(
    ranks: list[dict[str, Any]], key: str, message: str
) -> None:
    for result in (ranks[0][f"fsdp2/{key}"], ranks[1][f"fsdp2/{key}"]):
        assert message in result and "(unchanged: True)" in result


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_zero_redundancy_optimizer(ranks: list[dict[str, Any]], precision: str) -> None:
    key = f"zero/{precision}"
    expected = _single_process(adamkit.Adam, state_precision=precision)
    for a, b, want in zip(ranks[0][key]["params"], ranks[1][key]["params"], expected, strict=True):
        assert torch.equal(a, b)
        # Each process steps whole parameters, so the 8-bit blocks are the unsharded run's; but
        # the all-reduced gradients differ from one process's by float rounding, which can flip
        # a code now and then (measured: one element of 12,288 by 2e-5).
        if precision == "fp32":
            torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-5)
        else:
            assert ((a - want).abs() > 1e-5).float().mean() < 0.01
    assert_updates_close(ranks[0][key]["params"], expected, RELATIVE[precision])
    # The state is partitioned between the processes, and consolidates on rank 0.
    assert ranks[0][key]["local_state"] + ranks[1][key]["local_state"] == 4
    assert 0 < ranks[0][key]["local_state"] < 4
    consolidated = ranks[0][key]["consolidated"]
    assert len(consolidated["state"]) == 4
    codes = {v.dtype for entry in consolidated["state"].values() for v in entry.values()}
    assert (torch.uint8 in codes) == (precision == "8bit")
    # It loads into a plain adamkit optimizer (8-bit state as 8-bit state).
    model = make_model()
    opt = adamkit.Adam(model.parameters(), lr=LR, state_precision=precision)
    opt.load_state_dict(consolidated)
    # And into a new ZeroRedundancyOptimizer, which continues the run exactly.
    for rank in ranks:
        for a, b in zip(rank[key]["resumed"], rank[key]["params"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_distributed_checkpoint_resharded_from_2_processes_to_1(
    out_dir: Path, precision: str
) -> None:
    """Saved with torch.distributed.checkpoint by 2 FSDP2 processes after 3 steps, with an
    adamkit.Scheduler's state, loaded by 1 (get_state_dict / dcp.load / set_state_dict) and
    continued: the uninterrupted single-process run's parameters, schedule included. 8-bit
    moments are saved decoded (fp32, sharded as the parameters) and re-encoded for the new
    shards, so the blocks differ: the bound of tests/test_precision.py."""
    resumed = torch.load(out_dir / f"dcp_{precision}.resumed.pt", weights_only=True)
    assert resumed["coded"] == (precision == "8bit")  # re-encoded as 8-bit on load
    model = make_model()
    opt = adamkit.AdamW(model.parameters(), lr=LR, state_precision=precision)
    train(model, opt, 0, 1, scheduler=adamkit.Scheduler(opt, SCHEDULE))
    expected = [p.detach() for p in model.parameters()]
    assert_updates_close(resumed["params"], expected, RELATIVE[precision])


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_a_full_checkpoint_loads_into_shards(ranks: list[dict[str, Any]], precision: str) -> None:
    """One process's plain state dict, loaded into a 2-process FSDP2 optimizer (each process
    takes its part; 8-bit codes are decoded and re-encoded for the shard), then continued."""
    expected = _single_process(adamkit.AdamW, state_precision=precision)
    assert_updates_close(ranks[0][f"full_into_shards/{precision}"], expected, RELATIVE[precision])
