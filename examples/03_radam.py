"""Seed section 'Rectified Adam': RAdam(params, lr, betas, eps, weight_decay), with its
rectification shown step by step."""

import torch
from torch import nn

import adamkit

torch.manual_seed(0)
x = torch.randn(100, 1)
t = 2.4785694 * x + 7.3256989 + torch.randn(100, 1) * 0.1
model = nn.Linear(1, 1)
optimizer = adamkit.RAdam(model.parameters(), lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)

for step in range(1, 1001):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(x), t)
    loss.backward()
    optimizer.step()
    if step <= 7 or step % 200 == 0:
        rho_t, r_t = adamkit.radam_rectification(step, 0.999)
        mode = "momentum SGD" if r_t is None else f"rectified, r_t = {r_t:.3f}"
        print(f"step {step:4d}  rho_t = {rho_t:7.3f}  {mode:24s} loss = {loss.item():.5f}")

assert loss.item() < 0.05
