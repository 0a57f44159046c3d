"""DIS optical flow on uint8 frames with OpenCV alone: what the corpus's CPU prepare stage runs,
so its workers load neither torch nor kornia."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["dis_pair_flows"]


def dis_pair_flows(
    frames: np.ndarray,
    scale: float = 1.0,
    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward DIS flow between consecutive frames of a clip, each pair once.

    Args:
        frames: ``[T,H,W,3]`` uint8 RGB (what the corpus stages pass around).
        scale: the flow is computed on frames scaled by this factor (0.5 = a quarter of the
            pixels, about 4x cheaper) and returned at that size, in pixels of that size;
            :func:`upscale_flow` brings it to full size.
        preset: OpenCV DIS preset.

    Returns:
        ``(forward, backward)``, each ``[T-1,2,h,w]`` float32 with ``forward[t]`` the flow
        t→t+1 and ``backward[t]`` the flow t+1→t (``frame_t(p) ≈ frame_t+1(p + forward[t](p))``).

    Example:
        >>> frames = np.random.default_rng(0).integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
        >>> fwd, bwd = dis_pair_flows(frames)
        >>> fwd.shape, bwd.shape
        ((2, 2, 32, 48), (2, 2, 32, 48))
    """
    if (
        not isinstance(frames, np.ndarray)
        or frames.ndim != 4
        or frames.shape[-1] != 3
        or frames.dtype != np.uint8
    ):
        shape = getattr(frames, "shape", None)
        raise ValueError(
            f"frames must be a [T,H,W,3] uint8 array, got {shape} {getattr(frames, 'dtype', '')}"
        )
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    t, h, w, _ = frames.shape
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    grays = []
    for frame in frames:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        grays.append(cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if size != (w, h) else gray)
    dis = cv2.DISOpticalFlow_create(preset)
    shape = (max(0, t - 1), 2, size[1], size[0])
    forward, backward = np.empty(shape, np.float32), np.empty(shape, np.float32)
    for i in range(t - 1):
        forward[i] = dis.calc(grays[i], grays[i + 1], None).transpose(2, 0, 1)
        backward[i] = dis.calc(grays[i + 1], grays[i], None).transpose(2, 0, 1)
    return forward, backward
