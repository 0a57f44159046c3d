"""SpatialDreamer models: video denoiser, RefinerNet, fusion/TIL processors, consistency control, pipeline."""

from spatialdreamer.models.attention_processors import (
    FusedSelfAttnProcessor,
    ReferenceBank,
    RefinerAttnProcessor,
    attach_reference_fusion,
    temporal_neighbours,
)
from spatialdreamer.models.configs import (
    CONFIGS,
    ModelConfig,
    build_pipeline,
    get_config,
    load_pretrained_svd,
)
from spatialdreamer.models.consistency import stereo_aware_loss, stereo_deviation_strength
from spatialdreamer.models.denoiser import SpatialDreamerDenoiser
from spatialdreamer.models.losses import training_losses
from spatialdreamer.models.pipeline import SpatialDreamerPipeline, SpatialDreamerPipelineOutput
from spatialdreamer.models.refinernet import RefinerNet
from spatialdreamer.models.tiling import chunk_starts, ramp_weights

__all__ = [
    "CONFIGS",
    "FusedSelfAttnProcessor",
    "ModelConfig",
    "ReferenceBank",
    "RefinerAttnProcessor",
    "RefinerNet",
    "SpatialDreamerDenoiser",
    "SpatialDreamerPipeline",
    "SpatialDreamerPipelineOutput",
    "attach_reference_fusion",
    "build_pipeline",
    "chunk_starts",
    "get_config",
    "load_pretrained_svd",
    "ramp_weights",
    "stereo_aware_loss",
    "stereo_deviation_strength",
    "temporal_neighbours",
    "training_losses",
]
