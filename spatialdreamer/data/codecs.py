"""Lossless storage encodings for disparity (16-bit) used by shards and synth ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["DISPARITY_OFFSET", "DISPARITY_SCALE", "disparity_from_u16", "disparity_to_u16"]

DISPARITY_SCALE = 64.0  # 1/64 px steps
DISPARITY_OFFSET = 32768  # zero disparity; range -512 .. +512 px


def disparity_to_u16(disparity: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pixels → uint16 codes (1/64 px, ±512 px). Values outside the range are clipped."""
    d = np.asarray(disparity) if isinstance(disparity, np.ndarray) else np.asarray(disparity.detach().cpu())
    codes = np.rint(d.astype(np.float64) * DISPARITY_SCALE) + DISPARITY_OFFSET
    return np.clip(codes, 0, 65535).astype(np.uint16)


def disparity_from_u16(codes: np.ndarray) -> np.ndarray:
    """uint16 codes → float32 pixels (exact inverse of :func:`disparity_to_u16` on its grid)."""
    if codes.dtype != np.uint16:
        raise TypeError(f"disparity codes must be uint16, got {codes.dtype}")
    return ((codes.astype(np.float32) - DISPARITY_OFFSET) / DISPARITY_SCALE).astype(np.float32)
