"""adamkit.param_groups on real torch modules: which parameters get weight decay, overrides,
tied weights, layer-wise lr decay, and the groups working in adamkit's and torch's optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adamkit


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(5, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, 2, 16, dropout=0.0, batch_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def _names(groups: list[dict], label: str) -> set[str]:
    return {n for g in groups if g["name"].split(".")[0] == label for n, _ in g["params"]}


def test_decay_is_decided_by_module_type() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.LayerNorm(6),
        nn.GroupNorm(2, 6),
    )
    groups = adamkit.param_groups(model, weight_decay=0.05)
    assert _names(groups, "decay") == {"0.weight", "3.weight"}
    assert _names(groups, "no_decay") == {
        "0.bias",
        "1.weight",
        "1.bias",
        "3.bias",
        "4.weight",
        "4.bias",
        "5.weight",
        "5.bias",
    }
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 0.05), ("no_decay", 0.0)]


def test_transformer_embeddings_norms_and_tied_weights() -> None:
    model = TinyTransformer()
    groups = adamkit.param_groups(model)
    decay, no_decay = _names(groups, "decay"), _names(groups, "no_decay")
    assert "embed.weight" in no_decay  # tied to head.weight, owned by an Embedding
    assert "head.weight" not in decay | no_decay  # the same tensor, listed once
    assert "layers.0.self_attn.in_proj_weight" in decay
    assert "layers.0.self_attn.in_proj_bias" in no_decay
    assert "layers.0.linear1.weight" in decay and "layers.0.linear1.bias" in no_decay
    assert "layers.2.norm2.weight" in no_decay and "norm.weight" in no_decay
    assert "pos" in decay  # a bare Parameter: decayed unless a pattern says otherwise
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for g in groups for _, p in g["params"]} == everything


def test_name_patterns_override_the_module_rule() -> None:
    model = TinyTransformer()
    groups = adamkit.param_groups(model, no_decay=["pos"], decay=["layers.*.norm1.weight"])
    assert "pos" in _names(groups, "no_decay")
    assert {"layers.0.norm1.weight", "layers.2.norm1.weight"} <= _names(groups, "decay")
    with pytest.raises(ValueError, match=r"the pattern 'posx' matches no parameter"):
        adamkit.param_groups(model, no_decay=["posx"])


def test_layer_decay_scales_lr_by_depth() -> None:
    model = TinyTransformer(depth=3)
    groups = adamkit.param_groups(model, lr=1.0, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in groups for n, _ in g["params"]}
    assert lr_of["embed.weight"] == 0.5**4 and lr_of["pos"] == 0.5**4
    assert lr_of["layers.0.linear1.weight"] == 0.5**3
    assert lr_of["layers.2.linear1.weight"] == 0.5**1
    assert lr_of["norm.weight"] == 1.0
    names = {g["name"] for g in groups}
    assert {"decay.1", "no_decay.0", "no_decay.4"} <= names
    with pytest.raises(ValueError, match="layer_decay needs the base lr"):
        adamkit.param_groups(model, layer_decay=0.5)
    with pytest.raises(ValueError, match=r"blocks='nope' is not an nn.ModuleList"):
        adamkit.param_groups(model, lr=1.0, layer_decay=0.5, blocks="nope")


def test_frozen_parameters_are_left_out_unless_asked() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    assert _names(adamkit.param_groups(model), "decay") == {"1.weight"}
    assert _names(adamkit.param_groups(model, include_frozen=True), "decay") == {
        "0.weight",
        "1.weight",
    }


@pytest.mark.parametrize("make", [adamkit.AdamW, torch.optim.AdamW], ids=["adamkit", "torch"])
def test_groups_drive_an_optimizer_and_keep_names(make: type[torch.optim.Optimizer]) -> None:
    model = TinyTransformer()
    opt = make(adamkit.param_groups(model, weight_decay=0.1), lr=1e-3)
    tokens = torch.randint(0, 11, (2, 5))
    model(tokens).sum().backward()
    opt.step()
    saved = opt.state_dict()["param_groups"]
    assert [g["weight_decay"] for g in saved] == [0.1, 0.0]
    assert "embed.weight" in saved[1]["param_names"]
    adamkit.set_lr(opt, 0.0, groups="no_decay")
    assert adamkit.get_lr(opt) == [1e-3, 0.0]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"expected an nn\.Module, got list"):
        adamkit.param_groups([torch.zeros(2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight_decay=-1 is invalid"):
        adamkit.param_groups(nn.Linear(2, 2), weight_decay=-1)
    with pytest.raises(ValueError, match=r"layer_decay=1.5 is invalid"):
        adamkit.param_groups(nn.Linear(2, 2), lr=1.0, layer_decay=1.5)
