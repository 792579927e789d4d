"""Seed section 'weight decay': the L2 penalty (Adam's weight_decay) next to AdamW's decay."""

import torch
from torch import nn

import adamkit


def train(optimizer_cls: type, **kwargs: float) -> nn.Linear:
    torch.manual_seed(0)
    x = torch.randn(100, 1)
    t = 2.4785694 * x + 7.3256989 + torch.randn(100, 1) * 0.1
    model = nn.Linear(1, 1)
    optimizer = optimizer_cls(model.parameters(), lr=0.05, **kwargs)
    for _ in range(600):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        optimizer.step()
    return model


for label, model in {
    "no decay": train(adamkit.Adam),
    "Adam weight_decay=0.1 (L2 in the gradient)": train(adamkit.Adam, weight_decay=0.1),
    "AdamW weight_decay=0.1 (decoupled)": train(adamkit.AdamW, weight_decay=0.1),
}.items():
    print(f"{label:45s} a = {model.weight.item():.4f}  b = {model.bias.item():.4f}")
