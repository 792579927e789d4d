"""adamkit inside Hugging Face's Trainer: optimizers=(adamkit optimizer, adamkit.Scheduler), on a
tiny BERT built from a config (nothing is downloaded).

Needs: pip install 'adamkit[hf]' (or: make test, whose [dev] set includes it)."""

import tempfile

import torch

try:
    import transformers
except ModuleNotFoundError:
    raise SystemExit("this example needs transformers: pip install 'adamkit[hf]'") from None

import adamkit

config = transformers.BertConfig(
    vocab_size=30,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    num_labels=2,
)
torch.manual_seed(0)
model = transformers.BertForSequenceClassification(config)
ids = torch.randint(1, 30, (128, 8))
dataset = [{"input_ids": i, "labels": int(i[0] > 15)} for i in ids]  # learnable: the first token

optimizer = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.01), lr=2e-3)
scheduler = adamkit.Scheduler(optimizer, "warmup(10) + cosine(70)")
with tempfile.TemporaryDirectory() as out:
    args = transformers.TrainingArguments(
        output_dir=out,
        max_steps=80,
        per_device_train_batch_size=16,
        logging_steps=20,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler)
    )
    result = trainer.train()
print("training loss:", round(result.training_loss, 4), "final lr:", adamkit.get_lr(optimizer))
