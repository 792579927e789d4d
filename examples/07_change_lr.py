"""Seed section 'change learning rate': schedules, a restart at lr=120, and a change by hand."""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import adamkit


def trace(lr: float, factor: float, set_at: tuple[int, float] | None = None) -> list[float]:
    optimizer = adamkit.Adam(torch.nn.Linear(4, 3).parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lr_lambda=lambda e: factor)
    lrs = []
    for epoch in range(10):
        if set_at and epoch == set_at[0]:
            for group in optimizer.param_groups:  # change the lr by hand, mid-run
                group["lr"] = set_at[1]
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return lrs


curves = {
    "from lr=100": trace(100, 0.69),
    "from lr=120": trace(120, 0.69),
    "lr set to 50 at epoch 5": trace(100, 0.69, set_at=(5, 50.0)),
}
for label, lrs in curves.items():
    plt.plot(range(10), lrs, marker="o", label=label)
    print(f"{label:25s}", [round(v, 3) for v in lrs])
plt.legend()
plt.title("Changing the learning rate: a restart at lr=120, and set_lr(50) at epoch 5")
plt.xlabel("epoch")
plt.ylabel("lr")
plt.savefig(sys.argv[1] if len(sys.argv) > 1 else "change_lr.png")
assert curves["lr set to 50 at epoch 5"][5] == 50.0
