"""Warp-back pairs: the self-supervised training sample of DVG.

The source frame is warped to the other eye and that view is warped back to the source eye
with its own (warped) disparity. Pixels the other eye could not see have no way back, so the
round trip leaves holes exactly where a disocclusion would be, on a frame whose ground truth
is the source frame itself: an inpainting target without any stereo footage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from spatialdreamer.dvg.warp import forward_warp

__all__ = ["WarpBackPair", "warp_back_pair"]


@dataclass
class WarpBackPair:
    """All ``[B,*,H,W]``; masks are bool with True = hole.

    Attributes:
        warped: the other-eye view (zero in holes).
        warped_holes: its disocclusion holes.
        warped_disparity: the other eye's disparity (same sign convention as the input).
        back: the round-trip view in the source eye (zero in holes); the model's input once
            its holes are pre-filled (:func:`spatialdreamer.models.reference.rendered_view`).
        back_holes: holes of the round trip; the region the model learns to fill.
        target: the source frame, the ground truth for ``back``.
    """

    warped: torch.Tensor
    warped_holes: torch.Tensor
    warped_disparity: torch.Tensor
    back: torch.Tensor
    back_holes: torch.Tensor
    target: torch.Tensor


def warp_back_pair(
    image: torch.Tensor,
    disparity: torch.Tensor,
    *,
    towards: Literal["right", "left"] = "right",
    edge_threshold: float = 1.0,
) -> WarpBackPair:
    """Warp ``image`` to the other eye and back (see :func:`spatialdreamer.dvg.forward_warp`).

    Example:
        >>> img = torch.rand(1, 3, 4, 16)
        >>> d = torch.zeros(1, 1, 4, 16); d[..., 6:9] = 3.0   # a near object
        >>> pair = warp_back_pair(img, d)
        >>> bool(pair.back_holes.any()), torch.equal(pair.back[~pair.back_holes.expand_as(img)],
        ...                                          img[~pair.back_holes.expand_as(img)])
        (True, True)
    """
    there = forward_warp(image, disparity, towards=towards, edge_threshold=edge_threshold)
    back_to = "left" if towards == "right" else "right"
    back = forward_warp(
        there.image, there.disparity, valid=~there.holes, towards=back_to, edge_threshold=edge_threshold
    )
    return WarpBackPair(
        warped=there.image,
        warped_holes=there.holes,
        warped_disparity=there.disparity,
        back=back.image,
        back_holes=back.holes,
        target=image,
    )
