"""Pick a depth backend by name: ``"parallax"`` or a Hugging Face model id / local directory."""

from __future__ import annotations

import os
from typing import Any

import torch

from spatialdreamer.depth.base import DepthEstimator
from spatialdreamer.depth.parallax import ParallaxDepthEstimator
from spatialdreamer.depth.transformers_backend import DEFAULT_DEPTH_MODEL, TransformersDepthEstimator

__all__ = ["PARALLAX", "load_depth_estimator"]

#: name of the weight-free backend (``--depth-model parallax``)
PARALLAX = "parallax"


def load_depth_estimator(
    name: str | os.PathLike = DEFAULT_DEPTH_MODEL, device: str | torch.device = "auto", **kwargs: Any
) -> DepthEstimator:
    """The depth estimator for ``name`` on ``device``.

    Args:
        name: ``"parallax"`` (weight-free fallback, :class:`ParallaxDepthEstimator`) or a Hugging
            Face model id or local directory (:class:`TransformersDepthEstimator`); default
            ``depth-anything/Depth-Anything-V2-Small-hf``. A local directory named ``parallax``
            is reachable as ``./parallax``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        **kwargs: passed to the backend's constructor (e.g. ``max_batch_size``, ``polarity``,
            ``local_files_only`` for transformers; ``work_width`` for parallax).

    Raises:
        DepthModelError: the model cannot be loaded; the message names the options.
        ValueError: an empty name or bad backend arguments.

    Example:
        >>> load_depth_estimator("parallax", device="cpu")
        ParallaxDepthEstimator(name='parallax', device='cpu')
    """
    text = os.fspath(name)
    if not text.strip():
        raise ValueError("depth model name is empty; pass 'parallax' or a Hugging Face id / local directory")
    if text.strip().lower() == PARALLAX:
        return ParallaxDepthEstimator(device=device, **kwargs)
    return TransformersDepthEstimator(text, device=device, **kwargs)
