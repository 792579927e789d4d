"""Seed section 'learning rate': LambdaLR with lr_lambda = 0.67 ** epoch, plotted to a PNG."""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import adamkit

model = torch.nn.Linear(4, 3)
optimizer = adamkit.Adam(model.parameters(), lr=100)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: 0.67**epoch)

lrs = []
for _ in range(10):
    optimizer.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    scheduler.step()

print("lr per epoch:", [round(lr, 4) for lr in lrs])
plt.plot(range(10), lrs, marker="o")
plt.xlabel("epoch")
plt.ylabel("lr")
plt.title("LambdaLR(0.67 ** epoch)")
plt.savefig(sys.argv[1] if len(sys.argv) > 1 else "lambda_lr.png")
assert abs(lrs[-1] - 100 * 0.67**9) < 1e-9
