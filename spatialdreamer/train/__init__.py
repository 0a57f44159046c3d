"""Training: settings, the step, the per-worker loop and pickle-free checkpoints (no Ray here;
``pipelines/train.py`` runs the loop on Ray Train workers)."""

from spatialdreamer.train.checkpoint import STATE_DIR, read_training_state
from spatialdreamer.train.config import TrainConfig
from spatialdreamer.train.loop import (
    LossModule,
    StepBatchSampler,
    Trainer,
    learning_rate_at,
    make_loader,
    run_worker,
)

__all__ = [
    "STATE_DIR",
    "LossModule",
    "StepBatchSampler",
    "TrainConfig",
    "Trainer",
    "learning_rate_at",
    "make_loader",
    "read_training_state",
    "run_worker",
]
