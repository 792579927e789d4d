"""adamkit inside PyTorch Lightning: configure_optimizers returns an adamkit optimizer over
adamkit.param_groups and an adamkit.Scheduler stepped every optimizer step.

Needs: pip install 'adamkit[lightning]' (or: make test, whose [dev] set includes it)."""

try:
    import lightning.pytorch as pl
except ModuleNotFoundError:
    raise SystemExit("this example needs lightning: pip install 'adamkit[lightning]'") from None
import torch
from torch import nn

import adamkit


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = adamkit.AdamW(adamkit.param_groups(self.net, weight_decay=0.05), lr=0.02)
        scheduler = adamkit.Scheduler(optimizer, "warmup(20) + cosine(180, floor=0.1)")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


torch.manual_seed(0)
x = torch.randn(256, 3)
y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
trainer = pl.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False)
trainer.fit(Regression(), loader)
print("final lr:", adamkit.get_lr(trainer.optimizers[0]))
print("final loss:", trainer.callback_metrics["loss"].item())
