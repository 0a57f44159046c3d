"""Shared input checks: video tensors ``[T,C,H,W]`` in [0, 1] and optional masks ``[T,1,H,W]``."""

from __future__ import annotations

import torch

__all__ = ["as_video", "as_video_pair", "masked_nanmean"]


_SLACK = 1e-3  # round-off from resampling or decoding; a video in [0, 255] is far outside


def as_video(x: torch.Tensor, name: str = "video", data_range: float = 1.0) -> torch.Tensor:
    """``[C,H,W]`` → ``[1,C,H,W]``; ``[T,C,H,W]`` unchanged; float32; anything else is an error,
    including values outside ``[0, data_range]`` (the usual mistake: a 0-255 video as floats)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [T,C,H,W] in [0, 1], got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be [T,C,H,W] (or [C,H,W]) with C in (1, 3), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1], got {x.dtype}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_SLACK * data_range or hi > (1 + _SLACK) * data_range or lo != lo or hi != hi:
            raise ValueError(
                f"{name} values must lie in [0, {data_range:g}], got [{lo:.4g}, {hi:.4g}]"
                + (" (a 0-255 video? divide by 255)" if hi > 2 * data_range else "")
            )
    return x.float()


def as_video_pair(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check ``pred``/``target`` ``[T,C,H,W]`` of one shape and ``mask`` ``[T,1,H,W]`` (bool)."""
    pred, target = as_video(pred, "pred", data_range), as_video(target, "target", data_range)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if target.device != pred.device:
        target = target.to(pred.device)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a bool torch.Tensor [T,1,H,W], got {type(mask).__name__}")
        if mask.ndim == 3:
            mask = mask.unsqueeze(0)
        t, _, h, w = pred.shape
        if mask.shape != (t, 1, h, w):
            raise ValueError(
                f"mask must be [T,1,H,W] = {(t, 1, h, w)} to match the videos, got {tuple(mask.shape)}"
            )
        mask = mask.to(pred.device).bool()
    return pred, target, mask


def masked_nanmean(values: torch.Tensor) -> float:
    """Mean of the finite-or-inf per-frame values, ignoring NaN (frames with an empty mask)."""
    keep = ~torch.isnan(values)
    if not bool(keep.any()):
        return float("nan")
    return float(values[keep].double().mean())
