"""What the models see, built one way for training and for inference.

**The reference** RefinerNet encodes (:func:`reference_view`).

At inference the reference is the source eye: a complete frame. In warp-back training the
reference is the other eye, itself forward-warped from the source, so it has holes. Showing
RefinerNet black holes in training but complete frames at inference would train it on inputs it
never meets, so both paths go through :func:`reference_view`: holes are filled from their
background side (the classical propagation, no inpainting), and a view without holes is
returned unchanged.

**The rendered view** the denoiser is conditioned on (:func:`rendered_view`): the warped view
with its holes pre-filled by the converter's classical fill (background propagation, then
inpainting), not left black. The mask
still tells the denoiser which pixels are invented, and the classical fill is then the
starting point it improves on: copying its condition in the holes already reaches the
classical baseline, so training starts from there instead of from black.
"""

from __future__ import annotations

import torch

from spatialdreamer.stereo.fill import fill_holes

__all__ = ["reference_view", "rendered_view"]


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


def rendered_view(
    view: torch.Tensor, holes: torch.Tensor, disparity: torch.Tensor | None = None
) -> torch.Tensor:
    """The denoiser's condition: ``view`` ``[T, 3, H, W]`` with its ``holes`` ``[T, 1, H, W]``
    filled as the converter's classical fill does: from the farther side (``disparity``
    ``[T, 1, H, W]`` of the view, larger = nearer; without it, from the right: a right eye
    warped from a left source), then smoothed by inpainting.

    Example:
        >>> view = torch.zeros(1, 3, 8, 8); view[..., 6:] = 1.0
        >>> holes = torch.zeros(1, 1, 8, 8, dtype=torch.bool); holes[..., 3:6] = True
        >>> bool(rendered_view(view, holes)[..., 3:6].min() > 0.9)  # from the right
        True
    """
    if view.ndim != 4 or view.shape[1] != 3:
        raise ValueError(f"view must be [T, 3, H, W], got {tuple(view.shape)}")
    return fill_holes(view, holes, disparity, background_side="right")
