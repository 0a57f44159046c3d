"""Overlapping windows over time and tiles over space, blended with linear ramps.

Long videos and large frames are denoised chunk by chunk; at every denoising step each chunk's
prediction is weighted by a ramp that falls off towards the chunk's inner edges and the
weighted predictions are averaged. Blending every step (not only at the end) keeps neighbouring
chunks on one trajectory, so chunk boundaries neither flash in time nor seam in space.
"""

from __future__ import annotations

import torch

__all__ = ["chunk_starts", "ramp_weights"]


def chunk_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``range(length)`` with at least ``overlap`` shared.

    Returns ``[0]`` when ``size >= length``. The last window is aligned to the end.

    Example:
        >>> chunk_starts(10, 4, 1)
        [0, 3, 6]
        >>> chunk_starts(11, 4, 1)
        [0, 3, 6, 7]
    """
    if length < 1 or size < 1:
        raise ValueError(f"length and size must be >= 1, got {length} and {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got overlap={overlap} for size={size}")
    if size >= length:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def ramp_weights(size: int, overlap: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Blend weights ``[size]`` in (0, 1]: a linear ramp over ``overlap`` positions at each end.

    Weights are strictly positive so every position of a chunk contributes; after normalising
    by the summed weights, a position covered by one chunk gets exactly that chunk's value.

    Example:
        >>> ramp_weights(6, 2).tolist()
        [0.3333333432674408, 0.6666666865348816, 1.0, 1.0, 0.6666666865348816, 0.3333333432674408]
    """
    idx = torch.arange(size, device=device, dtype=torch.float32)
    ramp = torch.minimum(idx + 1, size - idx) / (overlap + 1)
    return ramp.clamp(max=1.0)
