"""Seed example 'Adam optimizer PyTorch example': fit t = a*x + b + noise with nn.Linear(1, 1).

adamkit.Adam is a drop-in for torch.optim.Adam: only the import changes.
"""

import torch
from torch import nn

import adamkit

a, b, error, n = 2.4785694, 7.3256989, 0.1, 100
torch.manual_seed(0)
x = torch.randn(n, 1)
t = a * x + b + torch.randn(n, 1) * error

model = nn.Linear(1, 1)
optimizer = adamkit.Adam(model.parameters(), lr=0.05)
loss_fn = nn.MSELoss()

for i in range(400):  # the seed runs 10 iterations, too few to reach b = 7.3 at lr = 0.05
    optimizer.zero_grad()
    loss = loss_fn(model(x), t)
    loss.backward()
    optimizer.step()
    if i % 50 == 0 or i == 399:
        print(
            f"iter {i:3d}  learned a = {model.weight.item():.4f}"
            f"  learned b = {model.bias.item():.4f}"
        )

assert abs(model.weight.item() - a) < 0.05 and abs(model.bias.item() - b) < 0.05
