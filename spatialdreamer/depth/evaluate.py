"""Accuracy of relative depth against ground truth: rank correlation and aligned AbsRel.

Relative inverse depth is only defined up to scale and shift, so it is scored by the Spearman
rank correlation with the true inverse depth and by AbsRel after a least-squares
scale-and-shift alignment in inverse-depth space (the MiDaS / Depth Anything protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from spatialdreamer.depth.base import DepthEstimator
from spatialdreamer.synth import StereoScene, make_scene

__all__ = ["aligned_absrel", "evaluate_depth", "evaluate_on_synth", "rank_correlation"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.numel() < 2:
        raise ValueError(
            f"pred and target must have the same shape with >= 2 values, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype, device=x.device)
    return ranks


def rank_correlation(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors (flattened), in [-1, 1].

    A constant input has no ranking and scores 0.

    Example:
        >>> round(rank_correlation(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0.1, 0.3, 0.2])), 6)
        0.5
    """
    _check_pair(pred, target)
    a = _ranks(pred.detach().flatten().double())
    b = _ranks(target.detach().flatten().double())
    if pred.detach().flatten().unique().numel() < 2 or target.detach().flatten().unique().numel() < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def aligned_absrel(pred_inverse: torch.Tensor, target_inverse: torch.Tensor, eps: float = 1e-6) -> float:
    """Mean ``|s * pred + t - target| / target`` with ``(s, t)`` the least-squares fit.

    Both inputs are inverse depth (larger = nearer), same shape; ``target_inverse`` must be > 0.
    """
    _check_pair(pred_inverse, target_inverse)
    p = pred_inverse.detach().flatten().double()
    g = target_inverse.detach().flatten().double()
    if (g <= 0).any():
        raise ValueError("target inverse depth must be > 0 everywhere")
    design = torch.stack([p, torch.ones_like(p)], 1)
    coef = torch.linalg.lstsq(design, g.unsqueeze(1)).solution.squeeze(1)
    aligned = (design @ coef).clamp(min=eps)
    return float(((aligned - g).abs() / g).mean())


def evaluate_depth(
    estimator: DepthEstimator | Callable[[torch.Tensor], torch.Tensor],
    scenes: Sequence[StereoScene],
    skip: int = 1,
) -> dict[str, float]:
    """Mean Spearman and aligned AbsRel of ``estimator`` over rendered synth ``scenes``.

    Each scene's left video goes through ``estimator`` as one batch (after ``reset()`` where it
    has one); the first ``skip`` frames of each are not scored (a motion-based estimator has no
    history there).

    Returns:
        ``{"spearman": ..., "absrel": ..., "frames": n}`` averaged over the scored frames.
    """
    if not scenes:
        raise ValueError("need at least one scene")
    rho, rel, n = 0.0, 0.0, 0
    for scene in scenes:
        if scene.left.shape[0] <= skip:
            raise ValueError(f"scenes need more than skip={skip} frames, got {scene.left.shape[0]}")
        if hasattr(estimator, "reset"):
            estimator.reset()
        pred = estimator(scene.left).float().cpu()
        truth = 1.0 / scene.depth.float()
        for t in range(skip, scene.left.shape[0]):
            rho += rank_correlation(pred[t], truth[t])
            rel += aligned_absrel(pred[t], truth[t])
            n += 1
    return {"spearman": rho / n, "absrel": rel / n, "frames": float(n)}


def evaluate_on_synth(
    estimator: DepthEstimator | Callable[[torch.Tensor], torch.Tensor],
    seeds: Sequence[int] = (0, 1, 2, 3, 4, 5),
    *,
    height: int = 96,
    width: int = 160,
    frames: int = 8,
    skip: int = 1,
) -> dict[str, float]:
    """:func:`evaluate_depth` on ``make_scene(seed, height=, width=, frames=)`` for each seed.

    This is the protocol behind the accuracy figures in
    :class:`~spatialdreamer.depth.parallax.ParallaxDepthEstimator`.
    """
    scenes = [make_scene(seed, height=height, width=width, frames=frames) for seed in seeds]
    return evaluate_depth(estimator, scenes, skip=skip)
