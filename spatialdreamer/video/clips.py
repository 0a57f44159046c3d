"""Clip planning: shots → fixed-length clips, and frames → the training resolution."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

__all__ = ["clip_ranges", "resize_and_crop"]


def clip_ranges(
    shot_starts: Sequence[int], total_frames: int, clip_length: int, stride: int, min_length: int
) -> list[tuple[int, int, int]]:
    """``(shot_index, start, end)`` frame ranges of the clips of a video; clips never cross cuts.

    Each shot is cut into windows of ``clip_length`` every ``stride`` frames; a shot's tail
    shorter than ``clip_length`` becomes one clip if it has at least ``min_length`` frames.

    Example:
        >>> clip_ranges([0, 20], 50, clip_length=8, stride=8, min_length=4)
        [(0, 0, 8), (0, 8, 16), (0, 16, 20), (1, 20, 28), (1, 28, 36), (1, 36, 44), (1, 44, 50)]
    """
    if clip_length < 1 or stride < 1 or not 1 <= min_length <= clip_length:
        raise ValueError(
            f"need clip_length >= 1, stride >= 1, 1 <= min_length <= clip_length; "
            f"got {clip_length}, {stride}, {min_length}"
        )
    starts = sorted({s for s in shot_starts if 0 <= s < total_frames} | {0}) if total_frames > 0 else []
    ranges = []
    for shot, begin in enumerate(starts):
        stop = starts[shot + 1] if shot + 1 < len(starts) else total_frames
        position = begin
        while position < stop:
            end = min(position + clip_length, stop)
            if end - position >= min_length:
                ranges.append((shot, position, end))
            if end == stop:
                break
            position += stride
    return ranges


def resize_and_crop(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale ``[T,3,H,W]`` uint8 frames to cover ``width x height`` and centre-crop to it."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T,3,H,W], got {tuple(frames.shape)}")
    _, _, h, w = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = []
    for frame in frames.permute(0, 2, 3, 1).cpu().numpy():
        resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
        y0, x0 = (new_h - height) // 2, (new_w - width) // 2
        out.append(resized[y0 : y0 + height, x0 : x0 + width])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
