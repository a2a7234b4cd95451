"""Evaluation: binary-choice datasets (`datasets`), batched yes/no scoring under a steerer (`score`),
metrics on the per-row score table (`metrics`) and the training-overlap check (`overlap`)."""
