"""Overlapping windows over time and tiles over space, blended with linear ramps.

Long videos and large frames are denoised chunk by chunk; at every denoising step each chunk's
prediction is weighted by a ramp that falls off towards the chunk's inner edges and the
weighted predictions are averaged. Blending every step (not only at the end) keeps neighbouring
chunks on one trajectory, so chunk boundaries neither flash in time nor seam in space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["ChunkPlan", "blend_chunks", "chunk_starts", "plan_chunks", "ramp_weights"]


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


@dataclass
class ChunkPlan:
    """Chunks of a ``[B, T, C, h, w]`` latent video and their blend weights.

    ``slices[i]`` indexes one chunk (all batch and channel entries); ``weight`` ``[1, F, 1, th, tw]``
    is the product of the temporal and the two spatial ramps; ``total`` ``[1, T, 1, h, w]`` sums
    the weights that land on each position (never zero: the chunks cover everything).
    """

    slices: list[tuple[slice, ...]]
    weight: torch.Tensor
    total: torch.Tensor


def plan_chunks(
    frames: int,
    height: int,
    width: int,
    *,
    window: int,
    window_overlap: int,
    tile: int | None = None,
    tile_overlap: int = 0,
    device: torch.device | None = None,
) -> ChunkPlan:
    """Temporal windows × spatial tiles over a latent video of ``frames × height × width``.

    ``window`` / ``tile`` larger than the video are clipped to it; overlaps are clipped to one
    less than the chunk size.
    """
    window = min(window, frames)
    t_over = min(window_overlap, window - 1)
    tile_h, tile_w = min(tile or height, height), min(tile or width, width)
    y_over, x_over = min(tile_overlap, tile_h - 1), min(tile_overlap, tile_w - 1)
    w_t = ramp_weights(window, t_over, device=device)
    w_y = ramp_weights(tile_h, y_over, device=device)
    w_x = ramp_weights(tile_w, x_over, device=device)
    weight = (w_t[:, None, None, None] * w_y[None, None, :, None] * w_x[None, None, None, :])[None]
    slices = [
        (slice(None), slice(t, t + window), slice(None), slice(y, y + tile_h), slice(x, x + tile_w))
        for t in chunk_starts(frames, window, t_over)
        for y in chunk_starts(height, tile_h, y_over)
        for x in chunk_starts(width, tile_w, x_over)
    ]
    total = torch.zeros(1, frames, 1, height, width, device=device)
    for sl in slices:
        total[sl] += weight
    return ChunkPlan(slices=slices, weight=weight, total=total)


def blend_chunks(
    plan: ChunkPlan, shape: tuple[int, ...], fn: Callable[[tuple[slice, ...]], torch.Tensor]
) -> torch.Tensor:
    """Evaluate ``fn`` on every chunk of ``plan`` and return the weight-normalised blend, ``shape`` float32.

    ``fn(slices)`` returns the chunk's ``[B, F, C, th, tw]`` result. If ``fn`` is the same
    function of position for every chunk, the blend reproduces it exactly.
    """
    out = torch.zeros(shape, device=plan.weight.device, dtype=torch.float32)
    for sl in plan.slices:
        out[sl] += fn(sl).float() * plan.weight
    return out / plan.total
