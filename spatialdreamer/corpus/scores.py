"""Clip scores for the manifest and the quality filters.

Cheap ones come from the uint8 frames and the optical flow before the GPU stage (so clips
that fail a threshold never reach it); depth ones from the shot-normalised depth, so they
describe the scene, not the depth budget drawn for the clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import imagehash
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["depth_scores", "flow_scores", "frame_scores", "quality_problem"]

_BLACK = 24  # luma at or below which a border row/column counts as a black bar (of 255)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114


def frame_scores(frames: np.ndarray) -> dict:
    """Scores of a clip's ``[T,H,W,3]`` uint8 RGB frames.

    - ``brightness``: mean luma in [0, 1];
    - ``sharpness``: variance of the Laplacian of the luma (8-bit units), mean over the
      first, middle and last frame (blurry or flat frames score low);
    - ``black_border``: share of the frame in black bars (letterbox/pillarbox): border rows
      and columns whose brightest pixel over the clip is near black;
    - ``phash``: 64-bit perceptual hash of the middle frame as 16 hex digits (near-duplicates
      differ in few bits: ``imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)``).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T,H,W,3] uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    picks = sorted({0, t // 2, t - 1})
    gray = [cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2GRAY) for i in picks]
    sharpness = float(np.mean([cv2.Laplacian(g, cv2.CV_32F).var() for g in gray]))
    brightness = float(_luma(frames[:, ::4, ::4].astype(np.float32)).mean() / 255.0)
    peak = frames.max(axis=(0, 3))  # [H,W] brightest channel over the clip
    dark_rows = peak.max(axis=1) <= _BLACK
    dark_cols = peak.max(axis=0) <= _BLACK

    def run(flags: np.ndarray) -> int:
        return int(np.argmin(flags)) if not flags.all() else len(flags)

    top, bottom = run(dark_rows), run(dark_rows[::-1])
    left, right = run(dark_cols), run(dark_cols[::-1])
    inner_h, inner_w = max(0, h - top - bottom), max(0, w - left - right)
    black_border = 1.0 - (inner_h * inner_w) / float(h * w)
    phash = str(imagehash.phash(Image.fromarray(np.ascontiguousarray(frames[t // 2]))))
    return {"brightness": brightness, "sharpness": sharpness, "black_border": black_border, "phash": phash}


def flow_scores(forward: torch.Tensor | np.ndarray, scale: float = 1.0) -> dict:
    """Motion scores from the forward flow ``[T-1,2,h,w]`` (pixels at ``scale`` of the clip).

    - ``motion_score``: mean flow magnitude, pixels per frame at the clip's size;
    - ``camera_motion``: median flow magnitude (the dominant, usually camera, motion); a
      static shot has no motion parallax to learn temporal consistency from.

    An array (DIS, the CPU prepare stage) is scored with numpy, a tensor (a learned flow, on
    its device) with torch; both give the lower middle value as the median.
    """
    if isinstance(forward, np.ndarray):
        flow = forward.astype(np.float32, copy=False)
        if flow.size == 0:
            return {"motion_score": 0.0, "camera_motion": 0.0}
        magnitude = np.hypot(flow[:, 0], flow[:, 1]).ravel() / np.float32(scale)
        step = max(1, magnitude.size // 200_000)
        sample = magnitude[::step]
        middle = (sample.size - 1) // 2
        return {
            "motion_score": float(magnitude.mean(dtype=np.float64)),
            "camera_motion": float(np.partition(sample, middle)[middle]),
        }
    import torch

    flow = forward.float()
    if flow.numel() == 0:
        return {"motion_score": 0.0, "camera_motion": 0.0}
    magnitude = torch.hypot(flow[:, 0], flow[:, 1]).flatten() / scale  # (norm over dim 1 is slow)
    step = max(1, magnitude.numel() // 200_000)
    return {
        "motion_score": float(magnitude.mean()),
        "camera_motion": float(magnitude[::step].median()),
    }


def depth_scores(normalized: torch.Tensor) -> dict:
    """Scene-depth scores from shot-normalised inverse depth ``[T,1,H,W]`` in [0, 1] (1 = near).

    - ``depth_p05``/``depth_p50``/``depth_p95``: where the scene sits between the shot's far
      and near ends (a clip of mostly distant background has a low median);
    - ``depth_edges``: share of pixels at a depth discontinuity (a horizontal step of more
      than 5 % of the shot's depth range): where a warp opens holes, whatever the budget.
    """
    import torch

    flat = normalized.float().flatten()
    step = max(1, flat.numel() // 200_000)
    q = torch.quantile(flat[::step], torch.tensor([0.05, 0.5, 0.95], device=flat.device)).cpu()
    steps = (normalized[..., 1:] - normalized[..., :-1]).abs() > 0.05
    return {
        "depth_p05": float(q[0]),
        "depth_p50": float(q[1]),
        "depth_p95": float(q[2]),
        "depth_edges": float(steps.float().mean()),
    }


def quality_problem(scores: dict, config) -> str | None:
    """The first threshold of ``config`` a clip's scores fail, as a reason; None if it passes."""
    checks = [
        ("brightness", "<", "min_brightness", "too dark"),
        ("brightness", ">", "max_brightness", "too bright"),
        ("sharpness", "<", "min_sharpness", "too blurry"),
        ("black_border", ">", "max_black_border", "black bars"),
        ("camera_motion", "<", "min_motion", "static"),
    ]
    for key, op, setting, what in checks:
        if key not in scores:
            continue
        value, limit = scores[key], float(getattr(config, setting))
        if (op == "<" and value < limit) or (op == ">" and value > limit):
            return f"{what}: {key} {value:.3g} {op} {setting} {limit:g}"
    return None
