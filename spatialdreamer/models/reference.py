"""The reference view RefinerNet encodes, built one way for training and for inference.

At inference the reference is the source eye: a complete frame. In warp-back training the
reference is the other eye, itself forward-warped from the source, so it has holes. Showing
RefinerNet black holes in training but complete frames at inference would train it on inputs it
never meets, so both paths go through :func:`reference_view`: holes are filled from their
background side (the classical propagation, no inpainting), and a view without holes is
returned unchanged.
"""

from __future__ import annotations

import torch

from spatialdreamer.stereo.fill import fill_holes

__all__ = ["reference_view"]


def reference_view(view: torch.Tensor, holes: torch.Tensor | None = None) -> torch.Tensor:
    """The complete reference frames ``[T, 3, H, W]`` float in [0, 1].

    Args:
        view: ``[T, 3, H, W]`` the other eye's frames (holes may hold anything).
        holes: ``[T, 1, H, W]`` bool, True = no source pixel; ``None`` = a complete view.

    Example:
        >>> left = torch.rand(2, 3, 8, 8)
        >>> torch.equal(reference_view(left), left)
        True
    """
    if view.ndim != 4 or view.shape[1] != 3:
        raise ValueError(f"view must be [T, 3, H, W], got {tuple(view.shape)}")
    if holes is None or not bool(holes.any()):
        return view
    return fill_holes(view, holes, None, background_side="right", inpaint=False)
