"""The processes of tests/test_distributed.py: ``python -m tests.distributed_worker OUT_DIR``.

Starts a real process group (gloo, 2 processes on loopback, spawned) and, in each process,
trains the same small model with adamkit optimizers under FSDP2 (``fully_shard``: DTensor
parameters, each process updating its shard) for every state precision, under DDP, and with
``ZeroRedundancyOptimizer`` (each process owning the state of some parameters); then saves a
distributed checkpoint (``torch.distributed.checkpoint``) with 2 processes mid-run and resumes
it with 1 process (resharded). Each
process writes what it ended with to ``OUT_DIR/rank<N>.pt``; the test compares that with one
process training the unsharded model on the same global batches.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import adamkit
from adamkit.optim._algorithms import ALGORITHMS


def _optimizers() -> list[tuple[str, dict[str, Any]]]:
    chosen: list[tuple[str, dict[str, Any]]] = []
    for name, row in ALGORITHMS.items():
        chosen.append((name, {}))
        if row.amsgrad_state and not any(kwargs for _, kwargs in chosen):
            chosen.append((name, {"amsgrad": True}))
    return chosen


#: Every adamkit optimizer (and AMSGrad, once) is run under FSDP2 in every state precision
#: it takes.
OPTIMIZERS = _optimizers()
FSDP_CASES = [
    (name, kwargs, precision)
    for (name, kwargs), precision in itertools.product(OPTIMIZERS, ("fp32", "bf16", "8bit"))
    if precision in ALGORITHMS[name].precisions and ALGORITHMS[name].elementwise
]
#: What needs a tensor's whole update, refused on shards: an option, and each algorithm whose
#: step is not elementwise (Adafactor's row and column statistics).
REFUSED_ON_SHARDS = {
    "cautious": ("AdamW", {"cautious": True}),
    **{name: (name, {}) for name, row in ALGORITHMS.items() if not row.elementwise},
}
WORLD = 2
STEPS = 6
BATCH = 8  # per process; the global batch is WORLD * BATCH


def label(name: str, kwargs: dict[str, Any]) -> str:
    return "AMSGrad" if kwargs.get("amsgrad") else name


def make_model() -> torch.nn.Module:
    """64 -> 96 -> 128: both weights are big enough (>= 4096 elements) for 8-bit state."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 128))


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(WORLD * BATCH, 64, generator=g), torch.randn(WORLD * BATCH, 128, generator=g))
        for _ in range(STEPS)
    ]


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rank: int,
    world: int,
    steps: slice = slice(None),
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """The global batches ``steps`` (all STEPS by default); this process takes its slice of each
    (all of it if alone)."""
    per = WORLD * BATCH // world
    for x, y in global_batches()[steps]:
        rows = slice(rank * per, (rank + 1) * per)
        loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


#: The schedule of the distributed-checkpoint run (its state is checkpointed too).
SCHEDULE = "warmup(2) + cosine(4, floor=0.1)"


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach().clone()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    results: dict[str, Any] = {}
    for name, kwargs, precision in FSDP_CASES:
        model = make_model()
        fully_shard(model)
        opt = getattr(adamkit, name)(
            model.parameters(), lr=1e-2, state_precision=precision, **kwargs
        )
        train(model, opt, rank, WORLD)
        results[f"fsdp2/{label(name, kwargs)}/{precision}"] = {
            "params": [_full(p) for p in model.parameters()],
            "path": opt.execution_path(),
            "state_types": sorted(
                {type(v).__name__ for entry in opt.state.values() for v in entry.values()}
            ),
            "local_bytes_per_param": adamkit.state_memory(opt).bytes_per_param,
        }
    # cautious / update_clipping and Adafactor need a tensor's whole update: refused on
    # shards, before any change (the parameters stay as they were).
    for key, (name, kwargs) in REFUSED_ON_SHARDS.items():
        model = make_model()
        fully_shard(model)
        opt = getattr(adamkit, name)(model.parameters(), lr=1e-2, **kwargs)
        before = [_full(p) for p in model.parameters()]
        try:
            train(model, opt, rank, WORLD)
            results[f"fsdp2/{key}"] = "stepped"
        except NotImplementedError as error:
            unchanged = all(
                torch.equal(a, _full(b)) for a, b in zip(before, model.parameters(), strict=True)
            )
            results[f"fsdp2/{key}"] = f"{error} (unchanged: {unchanged})"

    # DDP: every process steps whole tensors (Adafactor too).
    for name in ("Adam", *(n for n in REFUSED_ON_SHARDS if n in ALGORITHMS)):
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        opt = getattr(adamkit, name)(model.parameters(), lr=1e-2)
        train(model, opt, rank, WORLD)
        results[f"ddp/{name}"] = {"params": [_full(p) for p in model.parameters()]}

    from torch.distributed.optim import ZeroRedundancyOptimizer

    for precision in ("fp32", "8bit"):
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        zero = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=adamkit.Adam, lr=1e-2, state_precision=precision
        )
        train(model, zero, rank, WORLD)
        zero.consolidate_state_dict(to=0)
        consolidated = zero.state_dict() if rank == 0 else None
        results[f"zero/{precision}"] = {
            "params": [_full(p) for p in model.parameters()],
            "local_state": len(zero.optim.state),  # this process's partition only
            "consolidated": consolidated,
            "resumed": _zero_resumed(rank, precision),
        }
    for precision in ("fp32", "8bit"):
        results[f"full_into_shards/{precision}"] = _full_checkpoint_into_shards(rank, precision)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    leave()


def _zero_resumed(rank: int, precision: str) -> list[torch.Tensor]:
    """The ZeRO run again, saved after SAVED_AFTER steps (consolidated, sent to every process)
    and resumed by a new ZeroRedundancyOptimizer, whose load_state_dict writes the saved
    entries straight into each process's adamkit state."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def make(model: torch.nn.Module) -> ZeroRedundancyOptimizer:
        return ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=adamkit.Adam, lr=1e-2, state_precision=precision
        )

    model = torch.nn.parallel.DistributedDataParallel(make_model())
    zero = make(model)
    train(model, zero, rank, WORLD, slice(0, SAVED_AFTER))
    zero.consolidate_state_dict(to=0)
    saved = [zero.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(saved, src=0)
    resumed = make(model)
    resumed.load_state_dict(saved[0])
    train(model, resumed, rank, WORLD, slice(SAVED_AFTER, None))
    return [_full(p) for p in model.parameters()]


def _full_checkpoint_into_shards(rank: int, precision: str) -> list[torch.Tensor]:
    """One process's plain (unsharded) state dict after SAVED_AFTER steps, loaded into an FSDP2
    optimizer (each process takes its part), then the rest of the run."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    alone = make_model()
    alone_opt = adamkit.AdamW(alone.parameters(), lr=1e-2, state_precision=precision)
    train(alone, alone_opt, 0, 1, slice(0, SAVED_AFTER))
    model = make_model()
    fully_shard(model)
    with torch.no_grad():
        for p, q in zip(model.parameters(), alone.parameters(), strict=True):
            p.to_local().copy_(
                distribute_tensor(
                    q.detach(), p.device_mesh, p.placements, src_data_rank=None
                ).to_local()
            )
    opt = adamkit.AdamW(model.parameters(), lr=1e-2, state_precision=precision)
    opt.load_state_dict(alone_opt.state_dict())
    train(model, opt, rank, WORLD, slice(SAVED_AFTER, None))
    return [_full(p) for p in model.parameters()]


SAVED_AFTER = 3  # the distributed checkpoint is written after this many steps


def _checkpoint_worker(rank: int, world: int, port: int, out_dir: str, phase: str) -> None:
    """Save a distributed checkpoint (torch.distributed.checkpoint) with ``world`` processes,
    or load one written by another number of processes and finish the run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for precision in ("fp32", "8bit"):
        model = make_model()
        fully_shard(model)
        opt = adamkit.AdamW(model.parameters(), lr=1e-2, state_precision=precision)
        scheduler = adamkit.Scheduler(opt, SCHEDULE)
        where = Path(out_dir) / f"dcp_{precision}"
        if phase == "save":
            train(model, opt, rank, world, slice(0, SAVED_AFTER), scheduler)
            model_state, optim_state = get_state_dict(model, opt)
            state = {
                "model": model_state,
                "optim": optim_state,
                "scheduler": scheduler.state_dict(),
            }
            dcp.save(state, checkpoint_id=where)
            continue
        model_state, optim_state = get_state_dict(model, opt)
        loaded = {"model": model_state, "optim": optim_state, "scheduler": scheduler.state_dict()}
        dcp.load(loaded, checkpoint_id=where)
        set_state_dict(
            model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"]
        )
        scheduler.load_state_dict(loaded["scheduler"])
        coded = [v.dtype == torch.uint8 for e in opt.state.values() for v in e.values()]
        train(model, opt, rank, world, slice(SAVED_AFTER, None), scheduler)
        params = [_full(p) for p in model.parameters()]
        if rank == 0:
            torch.save({"params": params, "coded": any(coded)}, f"{where}.resumed.pt")
    leave()


def leave() -> NoReturn:
    """Leave together (tearing down first can abort the other process), then without the
    interpreter's tear-down: gloo's worker threads outlive destroy_process_group and release
    the last collective's tensors asynchronously, and one that needs the GIL once Python is
    finalising aborts the process (examples/10_fsdp2_torchrun.py says more)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    out = sys.argv[1]
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    # Save with 2 processes, resume with 1: the checkpoint is resharded.
    mp.spawn(_checkpoint_worker, args=(WORLD, free_port(), out, "save"), nprocs=WORLD, join=True)
    mp.spawn(_checkpoint_worker, args=(1, free_port(), out, "load"), nprocs=1, join=True)
