"""Classical hole filling for warped views: no trained model needed.

Disocclusions show what was behind a foreground edge, so they are filled from the
background side: each hole pixel takes the nearest valid pixel in its row on the side with
the smaller disparity. OpenCV inpainting then smooths the row-wise streaks; the foreground
pixels next to the hole are first overwritten (for the inpainting's context only) by that
background fill, so foreground colour never bleeds into the hole.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["fill_holes", "propagate_background"]


def _nearest_valid(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of the nearest valid pixel at or left of / right of each pixel (-1 = none)."""
    w = valid.shape[-1]
    col = torch.arange(w, device=valid.device).expand_as(valid)
    left = torch.where(valid, col, -1).cummax(-1).values
    right_flipped = torch.where(valid.flip(-1), col, -1).cummax(-1).values
    right = torch.where(right_flipped >= 0, (w - 1) - right_flipped, -1).flip(-1)
    return left, right


def _shift_columns(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``out[..., x] = mask[..., x - k]`` with False shifted in."""
    if k == 0:
        return mask
    w = mask.shape[-1]
    if k > 0:
        return F.pad(mask[..., : w - k], (k, 0), value=False)
    return F.pad(mask[..., -k:], (0, -k), value=False)


def propagate_background(
    image: torch.Tensor,
    holes: torch.Tensor,
    disparity: torch.Tensor | None = None,
    background_side: Literal["right", "left"] = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill holes row-wise from the background side.

    Args:
        image: ``[B,C,H,W]`` float.
        holes: ``[B,1,H,W]`` bool.
        disparity: optional ``[B,1,H,W]`` (larger = nearer); picks the farther neighbour.
        background_side: used without disparity: where the background is relative to a hole
            ("right" for right-eye views from a left source, "left" for the opposite).

    Returns:
        The filled image and, per pixel, the column the value was copied from.
    """
    valid = ~holes[:, 0]
    left, right = _nearest_valid(valid)
    has_l, has_r = left >= 0, right >= 0
    if disparity is not None:
        d = disparity[:, 0]
        d_l = d.gather(-1, left.clamp(min=0))
        d_r = d.gather(-1, right.clamp(min=0))
        take_right = has_r & (~has_l | (d_r <= d_l))
    else:
        take_right = has_r & (~has_l | (background_side == "right"))
    source = torch.where(take_right, right, left)
    source = torch.where(valid, torch.arange(valid.shape[-1], device=valid.device).expand_as(source), source)
    empty_row = source < 0
    gathered = image.gather(-1, source.clamp(min=0).unsqueeze(1).expand_as(image))
    if bool(empty_row.any()):  # a row with no valid pixel at all: use the frame's mean colour
        mean = image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
        gathered = torch.where(empty_row.unsqueeze(1), mean, gathered)
    return gathered, source


def fill_holes(
    image: torch.Tensor,
    holes: torch.Tensor,
    disparity: torch.Tensor | None = None,
    *,
    background_side: Literal["right", "left"] = "right",
    inpaint: bool = True,
    inpaint_radius: int = 3,
    guard: int = 2,
) -> torch.Tensor:
    """Fill the holes of a warped view; valid pixels are returned unchanged.

    Args:
        image: ``[B,C,H,W]`` float in [0, 1] (C = 1 or 3).
        holes: ``[B,1,H,W]`` bool.
        disparity: optional ``[B,1,H,W]`` of the warped view, to find the background side.
        inpaint: smooth the fill with OpenCV's Telea inpainting (else pure propagation).
        guard: width in pixels of the foreground band hidden from the inpainting.

    Example:
        >>> img = torch.zeros(1, 3, 4, 8); img[..., 5:] = 1.0
        >>> holes = torch.zeros(1, 1, 4, 8, dtype=torch.bool); holes[..., 3:5] = True
        >>> fill_holes(img, holes, inpaint=False)[0, 0, 0].tolist()
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if image.ndim != 4 or holes.shape != (image.shape[0], 1, *image.shape[2:]) or holes.dtype != torch.bool:
        raise ValueError(
            f"image must be [B,C,H,W] and holes a bool [B,1,H,W] of the same size, "
            f"got {tuple(image.shape)} and {holes.dtype} {tuple(holes.shape)}"
        )
    if not bool(holes.any()):
        return image.clone()
    filled, _ = propagate_background(image, holes, disparity, background_side)
    filled = torch.where(holes, filled, image)
    if not inpaint or image.shape[1] not in (1, 3):
        return filled
    # foreground band beside each hole, replaced by the background fill for context only
    near = F.max_pool2d(holes.float(), (1, 2 * guard + 1), stride=1, padding=(0, guard)) > 0
    band = near & ~holes
    if disparity is not None:
        _, source = propagate_background(image, holes | band, disparity, background_side)
        band &= disparity > disparity.gather(-1, source.clamp(min=0).unsqueeze(1)) + 0.5
    else:  # the foreground is on the side opposite the background
        step = 1 if background_side == "right" else -1
        fg_side = torch.zeros_like(holes)
        for k in range(1, guard + 1):
            fg_side |= _shift_columns(holes, -k * step)
        band &= fg_side
    context, _ = propagate_background(image, holes | band, disparity, background_side)
    context = torch.where(holes | band, context, image)
    out = filled.clone()
    for i in range(image.shape[0]):
        pixels = (context[i].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        mask = holes[i, 0].cpu().numpy().astype(np.uint8)
        painted = cv2.inpaint(np.ascontiguousarray(pixels), mask, inpaint_radius, cv2.INPAINT_TELEA)
        painted = torch.from_numpy(painted.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1).float() / 255.0
        out[i] = torch.where(holes[i], painted.to(image.device, image.dtype), image[i])
    return out
