"""torch/transformers only: model builders, scoring, losses, distillation and pruning. Never imports prefect."""
