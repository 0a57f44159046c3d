"""Classical hole filling for warped views: no trained model needed.

Disocclusions show what was behind a foreground edge, so they are filled from the
background side: each hole pixel takes the nearest valid pixel in its row on the side with
the smaller disparity. OpenCV inpainting then smooths the row-wise streaks; the foreground
pixels next to the hole are first overwritten (for the inpainting's context only) by that
background fill, so foreground colour never bleeds into the hole. On CPUs that context is
built by a compiled row kernel (numba) equal to the torch ops, and frames are inpainted in
parallel threads.

Thin holes (``thin``: runs of at most that many pixels along a row, such as the seams where
held depth meets fresh depth) are filled directly from their background-side neighbour and
are not inpainted: a seam has nothing to smooth, and the inpainting costs per hole pixel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from spatialdreamer.stereo import _fill_kernel

__all__ = ["fill_holes", "fill_holes_u8", "fill_thin_holes", "propagate_background"]


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


def fill_thin_holes(
    image: torch.Tensor,
    holes: torch.Tensor,
    disparity: torch.Tensor | None = None,
    background_side: Literal["right", "left"] = "right",
    width: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fill the holes that are thin along their row, from their background-side neighbour.

    A run of at most ``width`` hole pixels in a row (bounded by valid pixels or the frame's
    edge, with at least one valid pixel beside it) takes the colour, and the disparity, of the
    neighbour :func:`propagate_background` picks (the farther one with disparity).

    Args:
        image: ``[B,C,H,W]`` float; holes: ``[B,1,H,W]`` bool; disparity: optional
            ``[B,1,H,W]`` (larger = nearer).

    Returns:
        ``(image, holes, disparity)``: the image with the thin runs filled, the holes left
        (the wider runs) and the disparity with the thin runs' values (``None`` stays None).

    Example:
        >>> img = torch.tensor([[[[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0]]]])
        >>> holes = torch.tensor([[[[False, True, False, True, True, True, False]]]])
        >>> out, left, _ = fill_thin_holes(img, holes, width=2)
        >>> out[0, 0, 0].tolist(), left[0, 0, 0].tolist()
        ([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0], [False, False, False, True, True, True, False])
    """
    valid = ~holes[:, 0]
    left, right = _nearest_valid(valid)
    run = torch.where(right >= 0, right, valid.shape[-1]) - left - 1  # left is -1 at the edge
    thin = ~valid & (run <= width) & ((left >= 0) | (right >= 0))
    if not bool(thin.any()):
        return image, holes, disparity
    filled, source = propagate_background(image, holes, disparity, background_side)
    thin = thin.unsqueeze(1)
    image = torch.where(thin, filled, image)
    if disparity is not None:
        disparity = torch.where(thin, disparity.gather(-1, source.clamp(min=0).unsqueeze(1)), disparity)
    return image, holes & ~thin, disparity


def fill_holes(
    image: torch.Tensor,
    holes: torch.Tensor,
    disparity: torch.Tensor | None = None,
    *,
    background_side: Literal["right", "left"] = "right",
    inpaint: bool = True,
    inpaint_radius: int = 3,
    guard: int = 2,
    thin: int = 0,
) -> torch.Tensor:
    """Fill the holes of a warped view; valid pixels are returned unchanged.

    Args:
        image: ``[B,C,H,W]`` float in [0, 1] (C = 1 or 3).
        holes: ``[B,1,H,W]`` bool.
        disparity: optional ``[B,1,H,W]`` of the warped view, to find the background side.
        inpaint: smooth the fill with OpenCV's Telea inpainting (else pure propagation).
        guard: width in pixels of the foreground band hidden from the inpainting.
        thin: with inpainting, runs of at most this many hole pixels along a row are filled
            first from their background-side neighbour (:func:`fill_thin_holes`) and become
            valid context; only the wider holes are inpainted (0 = inpaint every hole).

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
    if not inpaint or image.shape[1] not in (1, 3):
        filled, _ = propagate_background(image, holes, disparity, background_side)
        return torch.where(holes, filled, image)
    if thin > 0:
        image, holes, disparity = fill_thin_holes(image, holes, disparity, background_side, thin)
        if not bool(holes.any()):
            return image
    on_cpu = image.device.type == "cpu" and image.dtype == torch.float32 and not image.requires_grad
    compiled = on_cpu and _fill_kernel.available()
    if compiled:
        pixels = _fill_kernel.inpaint_context(image, holes, disparity, background_side == "right", guard)
    else:
        pixels = _inpaint_context(image, holes, disparity, background_side, guard)
    masks = holes[:, 0].cpu().numpy().astype(np.uint8)
    painted = _inpaint_frames(pixels, masks, inpaint_radius)
    if compiled:
        return _fill_kernel.paste_painted(image, painted, holes)
    painted = torch.from_numpy(painted).permute(0, 3, 1, 2).float() / 255.0
    return torch.where(holes, painted.to(image.device, image.dtype), image)


def _inpaint_context(image, holes, disparity, background_side, guard) -> np.ndarray:
    """``uint8`` ``[B,H,W,C]``: the image with holes, and the foreground band beside them, given
    the background fill, so that foreground colour never bleeds into the inpainting."""
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
    return (context.permute(0, 2, 3, 1).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def _inpaint_frames(pixels: np.ndarray, masks: np.ndarray, radius: int) -> np.ndarray:
    """Telea inpainting of each ``[H,W,C]`` frame; frames run in parallel threads (OpenCV
    releases the GIL), as many as torch's intra-op threads."""

    def one(i: int) -> np.ndarray:
        if not masks[i].any():
            return pixels[i]
        painted = cv2.inpaint(np.ascontiguousarray(pixels[i]), masks[i], radius, cv2.INPAINT_TELEA)
        return painted.reshape(pixels.shape[1:])

    workers = min(len(pixels), torch.get_num_threads())
    if workers <= 1:
        return np.stack([one(i) for i in range(len(pixels))])
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, range(len(pixels)))))


def _windows(holes: np.ndarray, margin: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` windows around the holes of one ``[H,W]`` frame, ``margin`` pixels
    past them (within the frame): one per band of rows with holes, bands more than
    ``2 * margin`` rows apart kept apart."""
    h, w = holes.shape
    rows = np.flatnonzero(holes.any(1))
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > 2 * margin)
    out = []
    for first, last in zip(np.r_[0, breaks + 1], np.r_[breaks, rows.size - 1], strict=True):
        ya, yb = int(rows[first]), int(rows[last]) + 1
        cols = np.flatnonzero(holes[ya:yb].any(0))
        out.append(
            (
                max(0, ya - margin),
                min(h, yb + margin),
                max(0, int(cols[0]) - margin),
                min(w, int(cols[-1]) + 1 + margin),
            )
        )
    return out


def fill_holes_u8(
    frames: np.ndarray,
    holes: np.ndarray,
    disparity: np.ndarray,
    *,
    background_side: Literal["right", "left"] = "right",
    inpaint_radius: int = 3,
    guard: int = 2,
    thin: int = 0,
    pool=None,
) -> bool:
    """:func:`fill_holes` (with inpainting and disparity) of ``uint8`` frames, in place: the
    same pixels as ``fill_holes`` of the frames in [0, 1], converted back with
    ``clamp(0, 1) * 255 + 0.5``, computed only in windows around the holes.

    Args:
        frames: ``uint8`` ``[B,H,W,C]`` (any strides, e.g. one eye of a side-by-side frame).
        holes: bool ``[B,H,W]``; disparity: float32 ``[B,H,W]`` of the warped view.
        thin: as ``fill_holes``'s: thin runs are filled from their background-side neighbour
            by a compiled row pass (``holes`` and ``disparity`` are not changed: the frame's
            remaining holes and their disparity are copies).
        pool: an executor to spread the frames over (else one after another).

    Returns False when a frame has a row without any pixel to fill from (``fill_holes`` gives
    that row the frame's mean colour): the caller takes the float path (the frames may hold
    the thin fill by then, nothing else). Telea's inpainting reads ``inpaint_radius`` (+1)
    pixels around a hole and the context ``guard`` + 1 columns, so a window
    ``2 * inpaint_radius + guard + 4`` pixels past the holes gives the whole frame's result
    (bands of rows further apart than two such margins do not see each other).
    """
    margin = 2 * inpaint_radius + guard + 4
    bg_right = background_side == "right"
    disparity = np.ascontiguousarray(disparity, dtype=np.float32)

    def context(i: int):
        mask, disp = holes[i], disparity[i]
        if thin > 0:
            mask, disp = _fill_kernel.fill_thin_u8(frames[i], mask, disp, thin)
        pieces = []
        for window in _windows(mask, margin):
            pixels = _fill_kernel.context_u8(frames[i], mask, disp, bg_right, guard, window)
            if pixels is None:
                return None
            pieces.append((window, pixels))
        return mask, pieces

    def paint(i: int, context) -> None:
        holes_left, pieces = context
        for window, pixels in pieces:
            y0, y1, x0, x1 = window
            mask = holes_left[y0:y1, x0:x1].view(np.uint8)
            painted = cv2.inpaint(pixels, np.ascontiguousarray(mask), inpaint_radius, cv2.INPAINT_TELEA)
            _fill_kernel.paste_window(frames[i], painted, holes_left, window)

    indices = range(len(frames))
    contexts = list(pool.map(context, indices)) if pool is not None else [context(i) for i in indices]
    if any(c is None for c in contexts):
        return False
    if pool is not None:
        list(pool.map(paint, indices, contexts))
    else:
        for i in indices:
            paint(i, contexts[i])
    return True
