"""PSNR and SSIM over videos ``[T,C,H,W]`` in [0, 1], optionally restricted to a mask.

Video scores are the mean of per-frame scores (frames whose mask is empty are skipped), the
usual protocol for stereo/novel-view video papers. SSIM is the Gaussian-window SSIM of Wang
et al. 2004 (σ = 1.5, 11 taps, population covariance), averaged over channels: the same
numbers as ``skimage.metrics.structural_similarity(a, b, channel_axis=0, data_range=1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from spatialdreamer.metrics._checks import as_video_pair, masked_nanmean

__all__ = ["psnr", "ssim", "ssim_map"]

Reduction = Literal["mean", "none"]
_MSE_FLOOR = 1e-10  # identical frames score 100 dB instead of inf, so means stay finite


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    data_range: float = 1.0,
    reduction: Reduction = "mean",
) -> float | torch.Tensor:
    """Peak signal-to-noise ratio in dB.

    Args:
        pred, target: ``[T,C,H,W]`` (or ``[C,H,W]``) float in ``[0, data_range]``.
        mask: optional ``[T,1,H,W]`` bool; only these pixels count (e.g. the disocclusions).
        reduction: ``"mean"`` → mean over frames (a float); ``"none"`` → ``[T]`` per frame,
            NaN where a frame's mask is empty.

    Example:
        >>> a = torch.zeros(2, 3, 8, 8); b = a + 0.1
        >>> round(psnr(a, b), 3)
        20.0
    """
    pred, target, mask = as_video_pair(pred, target, mask, data_range)
    sq = (pred.double() - target.double()).pow(2).mean(1, keepdim=True)  # [T,1,H,W]
    if mask is None:
        mse = sq.flatten(1).mean(1)
    else:
        count = mask.flatten(1).sum(1)
        mse = torch.where(count > 0, (sq * mask).flatten(1).sum(1) / count.clamp(min=1), float("nan"))
    values = 10.0 * torch.log10(data_range**2 / mse.clamp(min=_MSE_FLOOR))
    values = torch.where(torch.isnan(mse), float("nan"), values).float()
    return values if reduction == "none" else masked_nanmean(values)


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _symmetric_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Half-sample symmetric padding (``d c b a | a b c d``), scipy.ndimage's ``reflect``."""
    h, w = x.shape[-2:]
    if r > min(h, w):
        raise ValueError(f"frames must be at least {r}x{r} pixels for SSIM, got {h}x{w}")
    rows = torch.cat([torch.arange(r - 1, -1, -1), torch.arange(h), torch.arange(h - 1, h - 1 - r, -1)])
    cols = torch.cat([torch.arange(r - 1, -1, -1), torch.arange(w), torch.arange(w - 1, w - 1 - r, -1)])
    return x[..., rows.to(x.device), :][..., cols.to(x.device)]


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable valid convolution of ``[N,1,H,W]`` with a 1-D kernel."""
    k = kernel.to(x.device, x.dtype)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return F.conv2d(x, k.view(1, 1, 1, -1))


def ssim_map(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel SSIM ``[T,C,H,W]`` (full size, symmetric border padding as in scikit-image)."""
    pred, target, _ = as_video_pair(pred, target, data_range=data_range)
    kernel = _gaussian_kernel(sigma, 3.5, torch.float64)
    r = (kernel.numel() - 1) // 2
    t, c, h, w = pred.shape
    x = _symmetric_pad(pred.double().reshape(t * c, 1, h, w), r)
    y = _symmetric_pad(target.double().reshape(t * c, 1, h, w), r)
    ux, uy = _blur(x, kernel), _blur(y, kernel)
    vx = _blur(x * x, kernel) - ux * ux
    vy = _blur(y * y, kernel) - uy * uy
    vxy = _blur(x * y, kernel) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(t, c, h, w).float()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    data_range: float = 1.0,
    reduction: Reduction = "mean",
) -> float | torch.Tensor:
    """Structural similarity (Gaussian window, σ = 1.5), in [-1, 1], 1 = identical.

    Without a mask, the map is averaged away from a 5-pixel border (scikit-image's protocol);
    with ``mask`` ``[T,1,H,W]`` the full-size map is averaged over the masked pixels, so holes
    at the frame edge count too.

    Args:
        pred, target: ``[T,C,H,W]`` (or ``[C,H,W]``) float in ``[0, data_range]``, at least 11x11.
        reduction: ``"mean"`` → float; ``"none"`` → ``[T]`` (NaN for frames with an empty mask).

    Example:
        >>> a = torch.rand(1, 3, 16, 16)
        >>> round(ssim(a, a), 6)
        1.0
    """
    pred, target, mask = as_video_pair(pred, target, mask, data_range)
    h, w = pred.shape[-2:]
    if h < 11 or w < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {h}x{w}")
    s = ssim_map(pred, target, data_range=data_range).double().mean(1, keepdim=True)  # [T,1,H,W]
    if mask is None:
        values = s[..., 5 : h - 5, 5 : w - 5].flatten(1).mean(1)
    else:
        count = mask.flatten(1).sum(1)
        values = torch.where(count > 0, (s * mask).flatten(1).sum(1) / count.clamp(min=1), float("nan"))
    values = values.float()
    return values if reduction == "none" else masked_nanmean(values)
