"""adamkit inside the trainers people use: a plain loop, PyTorch Lightning's
``configure_optimizers`` and Hugging Face's ``Trainer(optimizers=(optimizer, scheduler))``.
Lightning and transformers are test-environment dependencies (the ``dev`` extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import adamkit

SPEC = "warmup(5) + cosine(25, floor=0.1)"


def _regression_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1


def test_plain_loop() -> None:
    x, y = _regression_data()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.01), lr=0.1)
    sched = adamkit.Scheduler(opt, SPEC)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5  # 10x with this seed; 8.7x to 36x over seeds 0-7
    assert adamkit.get_lr(opt) == pytest.approx([0.1 * sched.schedules[0](30)] * 2)


def test_pytorch_lightning_configure_optimizers(tmp_path: Path) -> None:
    import lightning.pytorch as lightning

    x, y = _regression_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(3, 1)
            self.losses: list[float] = []

        def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self) -> dict[str, object]:
            opt = adamkit.RAdam(adamkit.param_groups(self.net, weight_decay=0.01), lr=0.1)
            sched = adamkit.Scheduler(opt, SPEC)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(0)
    module = Module()
    trainer = lightning.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(opt, adamkit.RAdam) and isinstance(sched, adamkit.Scheduler)
    assert sched.last_epoch == 30  # stepped once per optimizer step
    assert adamkit.get_lr(opt)[0] == pytest.approx(0.1 * sched.schedules[0](30))
    first, last = sum(module.losses[:4]) / 4, sum(module.losses[-4:]) / 4  # one epoch each
    assert last < first / 2


def test_hugging_face_trainer(tmp_path: Path) -> None:
    import transformers

    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)  # built from a config: no download
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (32, 8), generator=g)
    labels = (ids[:, 0] > 15).long()  # learnable from the first token
    dataset = [{"input_ids": i, "labels": label} for i, label in zip(ids, labels, strict=True)]

    opt = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.01), lr=3e-3)
    sched = adamkit.Scheduler(opt, SPEC)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=8,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset, optimizers=(opt, sched)
    )
    output = trainer.train()
    assert (
        trainer.optimizer.optimizer is opt
        if hasattr(trainer.optimizer, "optimizer")
        else trainer.optimizer is opt
    )
    assert sched.last_epoch == 30
    assert adamkit.get_lr(opt)[0] == pytest.approx(3e-3 * sched.schedules[0](30))
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged and all(lr > 0 for lr in logged)
    assert output.training_loss < 0.69  # below chance-level cross-entropy
