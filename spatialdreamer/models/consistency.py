"""Consistency control: stereo deviation strength and the stereo-aware loss.

The stereo deviation strength s(z) = |z₀ − z_ref| measures how far a view's latent is from the
reference view's latent. It is a scalar per sample (so it can be embedded like a timestep and
tell the denoiser how strong the stereo change should be) and the stereo-aware loss asks the
prediction ẑ₀ to deviate from the reference exactly as much as the ground truth does.
"""

from __future__ import annotations

import torch

__all__ = ["stereo_aware_loss", "stereo_deviation_strength", "visible_deviation_strength"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{names[0]} and {names[1]} must be tensors")
    if a.ndim < 2:
        raise ValueError(f"{names[0]} must be [B, ...] with at least 2 dims, got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def stereo_deviation_strength(z0: torch.Tensor, z_ref: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
    """Stereo deviation strength s(z₀) = |z₀ − z_ref|.

    Args:
        z0: latents of the view, ``[B, ...]`` (e.g. ``[B, T, C, h, w]``), any float dtype.
        z_ref: latents of the reference view, same shape.
        reduce: if True (default) average over every non-batch dim, giving one value per sample.

    Returns:
        ``[B]`` float32 when ``reduce`` (≥ 0), else the element-wise ``|z0 − z_ref|``.

    Example:
        >>> z = torch.zeros(2, 4, 3, 3); stereo_deviation_strength(z + 0.5, z)
        tensor([0.5000, 0.5000])
    """
    _check_pair(z0, z_ref, ("z0", "z_ref"))
    dev = (z0 - z_ref).abs()
    if not reduce:
        return dev
    return dev.flatten(1).float().mean(dim=1)


def visible_deviation_strength(z_view: torch.Tensor, z_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The deviation strength the denoiser is conditioned on: s measured where the view is known.

    The ground truth ``z₀`` exists only in training, so conditioning on ``s(z₀)`` would leave
    inference to guess it. Training and sampling both condition on this instead: the mean of
    ``|z_view − z_ref|`` over the latent cells that are not holes, from the rendered view's
    latents (warp-back view in training, forward-warped view at inference).

    Args:
        z_view: rendered-view latents ``[B, T, C, h, w]``.
        z_ref: reference latents, same shape.
        mask: hole mask in latent space ``[B, T, 1, h, w]`` (1 = hole).

    Returns:
        ``[B]`` float32, ≥ 0 (0 for a view that is all holes).

    Example:
        >>> z = torch.zeros(1, 1, 2, 2, 2); v = z + 1; v[..., 0, 0] = 9
        >>> m = torch.zeros(1, 1, 1, 2, 2); m[..., 0, 0] = 1
        >>> visible_deviation_strength(v, z, m)
        tensor([1.])
    """
    _check_pair(z_view, z_ref, ("z_view", "z_ref"))
    if mask.shape != (*z_view.shape[:-3], 1, *z_view.shape[-2:]):
        raise ValueError(
            f"mask must be [B, T, 1, h, w] matching {tuple(z_view.shape)}, got {tuple(mask.shape)}"
        )
    keep = (1.0 - mask.float()).expand_as(z_view)
    total = ((z_view - z_ref).abs().float() * keep).flatten(1).sum(dim=1)
    return total / keep.flatten(1).sum(dim=1).clamp(min=1.0)


def stereo_aware_loss(
    z0: torch.Tensor, z0_hat: torch.Tensor, z_ref: torch.Tensor, *, reduce_strength: bool = True
) -> torch.Tensor:
    """Stereo-aware loss l_d = ‖s(z₀) − s(ẑ₀)‖², averaged over the batch.

    Args:
        z0: ground-truth latents ``[B, ...]`` (no gradient is needed here).
        z0_hat: predicted clean latents, same shape; gradients flow into it.
        z_ref: reference-view latents, same shape.
        reduce_strength: compare per-sample strengths (the paper's definition, default) or, if
            False, the element-wise deviation maps (a denser signal).

    Returns:
        scalar float32 tensor, 0 when ``z0_hat == z0``.
    """
    _check_pair(z0, z0_hat, ("z0", "z0_hat"))
    _check_pair(z0, z_ref, ("z0", "z_ref"))
    s_true = stereo_deviation_strength(z0, z_ref, reduce=reduce_strength)
    s_pred = stereo_deviation_strength(z0_hat, z_ref, reduce=reduce_strength)
    return (s_true.float() - s_pred.float()).pow(2).mean()
