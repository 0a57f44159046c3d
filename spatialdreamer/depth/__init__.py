"""Depth estimation behind one interface, and temporal normalisation to disparity.

``load_depth_estimator(name, device)`` returns a :class:`DepthEstimator`: frames ``[B,3,H,W]``
in [0, 1] → relative inverse depth ``[B,1,H,W]`` (larger = nearer). Backends: any transformers
depth model (default Depth Anything V2 Small) and the weight-free ``parallax`` fallback.
:class:`TemporalNormalizer` turns relative inverse depth into shot-stable normalised inverse
depth and pixel disparity.
"""

from spatialdreamer.depth.base import DepthEstimator, DepthModelError, check_frames, resolve_device
from spatialdreamer.depth.evaluate import aligned_absrel, evaluate_depth, evaluate_on_synth, rank_correlation
from spatialdreamer.depth.factory import PARALLAX, load_depth_estimator
from spatialdreamer.depth.normalize import TemporalNormalizer
from spatialdreamer.depth.parallax import ParallaxDepthEstimator, camera_motion_residual, scene_prior
from spatialdreamer.depth.transformers_backend import (
    DEFAULT_DEPTH_MODEL,
    InputSpec,
    TransformersDepthEstimator,
    depth_polarity,
    fit_input_size,
)

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "PARALLAX",
    "DepthEstimator",
    "DepthModelError",
    "InputSpec",
    "ParallaxDepthEstimator",
    "TemporalNormalizer",
    "TransformersDepthEstimator",
    "aligned_absrel",
    "camera_motion_residual",
    "check_frames",
    "depth_polarity",
    "evaluate_depth",
    "evaluate_on_synth",
    "fit_input_size",
    "load_depth_estimator",
    "rank_correlation",
    "resolve_device",
    "scene_prior",
]
