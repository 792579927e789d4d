"""Sharded training with FSDP2 and an adamkit optimizer, launched by torchrun.

    torchrun --standalone --nproc-per-node 2 examples/10_fsdp2_torchrun.py

Each process holds half of every parameter (a DTensor) and of the optimizer state; adamkit
steps each process's shard with its fused kernel, here with 8-bit state. Run with plain
``python``, the script launches itself that way. On several machines, start the same script on
each with ``torchrun --nnodes 2 --nproc-per-node N --node-rank R --rdzv-backend c10d
--rdzv-endpoint HOST:29500``: nothing in adamkit changes (use the "nccl" backend on GPUs).
"""

import os
import subprocess
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import adamkit

if "RANK" not in os.environ:  # not under torchrun: relaunch on 2 local processes
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    sys.exit(subprocess.call([*command, "--nproc-per-node", "2", __file__, *sys.argv[1:]]))

dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)

torch.manual_seed(0)  # the same initial model on every process
model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)
fully_shard(model)

optimizer = adamkit.AdamW(model.parameters(), lr=1e-2, state_precision="8bit")
scheduler = adamkit.Scheduler(optimizer, "warmup(20) + cosine(180, floor=0.1)")

data = torch.Generator().manual_seed(1 + rank)  # each process its own samples
true_w = torch.linspace(-1, 1, 32) / 3
for step in range(200):
    x = torch.randn(64, 32, generator=data)
    y = (x @ true_w).unsqueeze(1).sin()
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % 50 == 0 or step == 199:
        average = loss.detach().clone()
        dist.all_reduce(average)
        if rank == 0:
            print(f"step {step:3d}  loss {average.item() / world:.4f}")

if rank == 0:
    weight = next(model.parameters())
    shard = tuple(weight.to_local().shape)
    print(f"first weight: {type(weight).__name__} {tuple(weight.shape)}, here {shard}")
    print(f"optimizer state on this process: {adamkit.state_memory(optimizer)}")
dist.barrier()  # leave together: a process that tears down its group first can abort the other
dist.destroy_process_group()
# Leave without Python's interpreter tear-down. gloo's worker threads outlive
# destroy_process_group (FSDP2's device mesh keeps the group alive) and release the last
# collective's tensors on their own, asynchronously; a release that needs the GIL after the
# interpreter has begun finalising aborts the process ("terminate called without an active
# exception", about 1 run in 20 here; see pytorch/pytorch#179291). Nothing is left to save.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
