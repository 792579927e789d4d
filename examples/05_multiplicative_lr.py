"""Seed section 'scheduler': MultiplicativeLR with a factor of 0.69 per epoch, plotted."""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import adamkit

model = torch.nn.Linear(6, 5)
optimizer = adamkit.Adam(model.parameters(), lr=100)
scheduler = torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lr_lambda=lambda epoch: 0.69)

lrs = []
for _ in range(10):
    optimizer.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    scheduler.step()

print("lr per epoch:", [round(lr, 4) for lr in lrs])
plt.plot(range(10), lrs, marker="o")
plt.xlabel("epoch")
plt.ylabel("lr")
plt.title("MultiplicativeLR(0.69)")
plt.savefig(sys.argv[1] if len(sys.argv) > 1 else "multiplicative_lr.png")
assert abs(lrs[-1] - 100 * 0.69**9) < 1e-9
