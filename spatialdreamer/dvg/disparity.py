"""Disparity control: from depth-model output to pixel disparity.

Depth models give relative inverse depth (larger = nearer) or metric depth (larger =
farther). Both become a normalised inverse depth ``n`` in [0, 1] over a *given* range (the
shot-level range from temporal normalisation, never a per-frame min-max, which flickers),
then pixels: ``disparity = budget/100 * width * (n - convergence)``.

``convergence`` is the normalised inverse depth placed on the screen plane (zero parallax):
0 puts the farthest point on the screen and everything else in front of it, 1 puts the
nearest point on the screen and everything behind it. Positive disparity = in front of the
screen = the pixel moves left in the right-eye view.
"""

from __future__ import annotations

import torch

__all__ = [
    "dilate_foreground",
    "disparity_from_normalized",
    "inverse_depth_from_metric",
    "normalize_inverse_depth",
    "robust_range",
]


def inverse_depth_from_metric(depth: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Metric depth (larger = farther, > 0) to inverse depth (larger = nearer)."""
    return 1.0 / depth.clamp(min=eps)


def robust_range(
    inverse_depth: torch.Tensor, low: float = 2.0, high: float = 98.0, max_samples: int = 1 << 18
) -> tuple[float, float]:
    """Percentile range of ``inverse_depth`` (any shape), robust to outliers.

    Large inputs are strided down to ``max_samples`` values before the quantile, which keeps
    the cost constant for 4K frames and long shots.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    flat = inverse_depth.detach().reshape(-1).float()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        raise ValueError("inverse depth has no finite values")
    if flat.numel() > max_samples:
        flat = flat[:: flat.numel() // max_samples + 1]
    return _percentile(flat, low), _percentile(flat, high)


def _percentile(flat: torch.Tensor, percent: float) -> float:
    """``torch.quantile``'s linear interpolation from two order statistics: selection is
    linear time where ``quantile`` sorts (about 10x faster per 720p frame on a CPU)."""
    position = percent / 100.0 * (flat.numel() - 1)
    below = int(position)
    above = min(below + 1, flat.numel() - 1)
    low_value = float(torch.kthvalue(flat, below + 1).values)
    if above == below or position == below:
        return low_value
    high_value = float(torch.kthvalue(flat, above + 1).values)
    return low_value + (position - below) * (high_value - low_value)


def normalize_inverse_depth(inverse_depth: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map ``[lo, hi]`` to ``[0, 1]`` (clamped). A flat range (``hi <= lo``) maps to 0."""
    span = hi - lo
    if span <= 1e-12:
        return torch.zeros_like(inverse_depth)
    return ((inverse_depth - lo) / span).clamp(0.0, 1.0)


def disparity_from_normalized(
    normalized: torch.Tensor, width: int, budget: float = 3.0, convergence: float = 0.0
) -> torch.Tensor:
    """Normalised inverse depth ``[0, 1]`` to disparity in pixels.

    Args:
        normalized: any shape, values in [0, 1] (1 = nearest).
        width: frame width in pixels; the budget is a share of it.
        budget: total disparity range as a percentage of the width (3 = comfortable, 5+ strong).
        convergence: normalised inverse depth of the zero-parallax plane, in [0, 1].

    Example:
        >>> disparity_from_normalized(torch.tensor([0.0, 0.5, 1.0]), width=1000, budget=2, convergence=0.5)
        tensor([-10.,   0.,  10.])
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (% of width), got {budget}")
    if not 0.0 <= convergence <= 1.0:
        raise ValueError(f"convergence must be in [0, 1], got {convergence}")
    return (normalized - convergence) * (budget / 100.0 * width)


def dilate_foreground(disparity: torch.Tensor, radius: tuple[int, int] = (2, 1)) -> torch.Tensor:
    """Grow near surfaces (larger disparity) outwards by ``radius = (x, y)`` pixels.

    Depth from a model is softer than the picture: the outermost pixels of a foreground object
    get part of the background's depth, stay behind when the object shifts, and leave a halo of
    its colour on the background. A grey-scale dilation (a flat ``(2y+1, 2x+1)`` max filter,
    which is what morphological dilation is, run as a few shifted maxima along each axis: on a
    CPU about ten times faster than ``max_pool2d`` or kornia's unfold-based ``dilation``) moves
    those pixels with their object; the disocclusion then opens on the background side.

    Args:
        disparity: ``[B,1,H,W]`` float, larger = nearer (also works on normalised inverse depth).
        radius: ``(x, y)`` pixels, each >= 0; ``(0, 0)`` returns the input.

    Example:
        >>> d = torch.zeros(1, 1, 1, 7); d[..., 3] = 5.0
        >>> dilate_foreground(d, (1, 0))[0, 0, 0].tolist()
        [0.0, 0.0, 5.0, 5.0, 5.0, 0.0, 0.0]
    """
    rx, ry = radius
    if rx < 0 or ry < 0:
        raise ValueError(f"edge dilation radius must be >= 0 pixels, got {radius}")
    if disparity.ndim != 4 or disparity.shape[1] != 1:
        raise ValueError(f"disparity must be [B,1,H,W], got {tuple(disparity.shape)}")
    out = disparity
    for axis, r in ((-1, rx), (-2, ry)):  # a rectangle's max filter is two 1-D ones
        if r == 0:
            continue
        src, out = out, out.clone()
        n = out.shape[axis]
        for k in range(1, min(r, n - 1) + 1):
            ahead, behind = out.narrow(axis, k, n - k), out.narrow(axis, 0, n - k)
            ahead.copy_(torch.maximum(ahead, src.narrow(axis, 0, n - k)))
            behind.copy_(torch.maximum(behind, src.narrow(axis, k, n - k)))
    return out
