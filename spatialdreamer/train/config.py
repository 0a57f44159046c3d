"""Training settings: one flat, validated dataclass (the job's YAML ``train:`` section)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

from spatialdreamer.models.configs import CONFIGS, get_config

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does. ``None`` fields take the model config's value."""

    model: str = "tiny"  # tiny | base | full (spatialdreamer.models.configs)
    stage: Literal["frames", "video"] = "video"  # frames: 1-frame windows, temporal layers frozen
    pretrained: str | None = None  # SVD id/folder or a SpatialDreamer pipeline folder; None = random init
    init_from: str | None = None  # checkpoint/pipeline folder whose (EMA) U-Net weights start this stage
    vae_pretrained: str | None = None  # VAE hub id/folder (default: the model config's)
    refiner_pretrained: str | None = None  # SD 2.1 U-Net for RefinerNet (default: the model config's)
    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 1  # samples per worker per step
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of learning_rate
    max_grad_norm: float = 1.0  # 0 = no clipping (the norm is still measured and logged)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 on CUDA if supported
    stereo_loss_weight: float | None = None  # λ in l = l_ε + λ·l_d
    hole_loss_weight: float = 1.0  # weight of hole cells in l_ε (1 = the paper's plain mean)
    num_frames: int | None = None
    resolution: tuple[int, int] | None = None  # (H, W)
    frame_stride: int | None = None  # frames between windows of a clip; None = num_frames
    query: str | None = None  # pandas query over the manifest
    ema_decay: float = 0.9999  # EMA of the trained weights (with warm-up); 0 = no EMA
    gradient_checkpointing: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    seed: int = 0
    data_workers: int = 2  # DataLoader processes per training worker (decode shards)
    cache_clips: int = 0  # decoded clips kept in memory per loader process (0 = none)
    checkpoint_every: int = 500
    log_every: int = 10

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainConfig:
        """Build and validate; unknown keys are an error that lists the known ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown train settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        for key in ("adam_betas", "resolution"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.model not in CONFIGS:
            raise ValueError(f"unknown model config {self.model!r}; choose one of {sorted(CONFIGS)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train setting {name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "data_workers", "seed", "cache_clips"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train setting {name} must be an integer >= 0, got {value!r}")
        for name in ("learning_rate", "weight_decay", "adam_eps", "max_grad_norm", "min_lr_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train setting {name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.stage not in ("frames", "video"):
            raise ValueError(f"stage must be 'frames' or 'video', got {self.stage!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if not isinstance(self.ema_decay, int | float) or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay!r}")
        if self.stage == "frames" and self.num_frames not in (None, 1):
            raise ValueError(
                f"the frames stage trains on single frames; num_frames must be 1, got {self.num_frames}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two values in [0, 1), got {list(self.adam_betas)}")
        if self.resolution is not None and (
            len(self.resolution) != 2 or min(self.resolution) < 8 or any(v % 8 for v in self.resolution)
        ):
            raise ValueError(f"resolution must be [H, W], multiples of 8, got {list(self.resolution)}")
        for name in ("num_frames", "frame_stride"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"train setting {name} must be an integer >= 1 or null, got {value!r}")
        if not isinstance(self.hole_loss_weight, int | float) or not (
            math.isfinite(self.hole_loss_weight) and self.hole_loss_weight >= 1
        ):
            raise ValueError(f"hole_loss_weight must be a finite number >= 1, got {self.hole_loss_weight!r}")
        if self.stereo_loss_weight is not None and not (
            math.isfinite(self.stereo_loss_weight) and self.stereo_loss_weight >= 0
        ):
            raise ValueError(
                f"stereo_loss_weight must be a finite number >= 0, got {self.stereo_loss_weight}"
            )

    # the model config's values where ours are None
    @property
    def frames(self) -> int:
        if self.stage == "frames":
            return 1
        return self.num_frames or get_config(self.model).num_frames

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.resolution or get_config(self.model).train_resolution)

    @property
    def lambda_d(self) -> float:
        w = self.stereo_loss_weight
        return get_config(self.model).stereo_loss_weight if w is None else float(w)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("adam_betas", "resolution"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out
