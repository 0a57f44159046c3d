"""Quality metrics for stereo video: PSNR, SSIM, LPIPS, FVD and the temporal warping error.

All take videos ``[T,C,H,W]`` float in [0, 1] and can be restricted to a mask ``[T,1,H,W]``
(e.g. the disocclusions, to score only what a model had to invent).
"""

from spatialdreamer.metrics.fvd import (
    FVDModelError,
    I3DFeatures,
    feature_statistics,
    frechet_distance,
    fvd,
    load_i3d,
    video_features,
)
from spatialdreamer.metrics.i3d import InceptionI3d
from spatialdreamer.metrics.image import psnr, ssim, ssim_map
from spatialdreamer.metrics.lpips import (
    LPIPS,
    LPIPSWeightsError,
    find_backbone_weights,
    find_lpips_weights,
    lpips,
)
from spatialdreamer.metrics.raft import RAFT, RAFTFlow, RAFTWeightsError, load_raft
from spatialdreamer.metrics.warping import e_warp

__all__ = [
    "LPIPS",
    "FVDModelError",
    "I3DFeatures",
    "InceptionI3d",
    "LPIPSWeightsError",
    "RAFT",
    "RAFTFlow",
    "RAFTWeightsError",
    "e_warp",
    "feature_statistics",
    "find_backbone_weights",
    "find_lpips_weights",
    "frechet_distance",
    "fvd",
    "load_i3d",
    "load_raft",
    "lpips",
    "psnr",
    "ssim",
    "ssim_map",
    "video_features",
]
