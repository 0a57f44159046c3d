"""The inpainting context of :func:`spatialdreamer.stereo.fill_holes` as one compiled pass per
row (numba), equal to the torch ops it replaces on CPUs.

The torch path builds the context in about thirty frame-sized ops (two background
propagations, each with cumulative maxima, flips and gathers); here each row is scanned a few
times in place and the result is written straight into the ``uint8`` ``[H,W,C]`` layout that
OpenCV's inpainting reads. Without numba the torch ops run.
"""

from __future__ import annotations

import numpy as np
import torch

from spatialdreamer.dvg._warp_kernel import load_numba, njit

__all__ = ["available", "inpaint_context", "paste_painted"]

_kernel = None
_import_error: str | None = None


def _compile():
    global _kernel, _import_error
    if _kernel is not None or _import_error is not None:
        return _kernel
    numba, _import_error = load_numba()
    if numba is None:
        return None

    def context(img, holes, disp, has_disp, bg_right, guard, means, out):
        b_count, c, h, w = img.shape
        half = np.float32(0.5)
        scale = np.float32(255.0)
        one = np.float32(1.0)
        zero = np.float32(0.0)
        near = np.empty(w, np.bool_)
        blocked = np.empty(w, np.bool_)
        band = np.empty(w, np.bool_)
        source = np.empty(w, np.int64)
        left = np.empty(w, np.int64)
        right = np.empty(w, np.int64)
        d = np.zeros(w, np.float32)
        step = 1 if bg_right else -1
        for b in range(b_count):
            for y in range(h):
                row = holes[b, y]
                if has_disp:
                    for x in range(w):
                        d[x] = disp[b, y, x]
                # foreground band beside each hole: within `guard` columns of one
                last_hole = -(1 << 40)
                for x in range(w):
                    if row[x]:
                        last_hole = x
                    near[x] = x - last_hole <= guard
                last_hole = 1 << 40
                for x in range(w - 1, -1, -1):
                    if row[x]:
                        last_hole = x
                    near[x] = near[x] or last_hole - x <= guard
                for x in range(w):
                    band[x] = near[x] and not row[x]
                if not has_disp:  # the foreground is on the side opposite the background
                    for x in range(w):
                        if band[x]:
                            fg = False
                            for k in range(1, guard + 1):
                                t = x + k * step
                                if 0 <= t < w and row[t]:
                                    fg = True
                            band[x] = fg
                # source[x]: x where not blocked, else the nearest unblocked column on the
                # background side (the farther one with disparity), -1 in a row with none;
                # with disparity, run twice: first to keep only the band pixels nearer than
                # the background they hide, then for the context itself
                for rep in range(2 if has_disp else 1):
                    for x in range(w):
                        blocked[x] = row[x] or band[x]
                    last = -1
                    for x in range(w):
                        if not blocked[x]:
                            last = x
                        left[x] = last
                    last = -1
                    for x in range(w - 1, -1, -1):
                        if not blocked[x]:
                            last = x
                        right[x] = last
                    for x in range(w):
                        lo, hi = left[x], right[x]
                        if not blocked[x]:
                            source[x] = x
                        elif hi >= 0 and (lo < 0 or (d[hi] <= d[lo] if has_disp else bg_right)):
                            source[x] = hi
                        else:
                            source[x] = lo
                    if has_disp and rep == 0:
                        for x in range(w):
                            if band[x]:
                                band[x] = d[x] > d[max(source[x], 0)] + half
                for x in range(w):
                    s = source[x] if blocked[x] else x
                    for ch in range(c):
                        v = img[b, ch, y, s] if s >= 0 else means[b, ch]
                        v = min(max(v, zero), one)
                        out[b, y, x, ch] = np.uint8(v * scale + half)

    def paste(out, painted, holes):
        b_count, c, h, w = out.shape
        scale = np.float32(255.0)
        for b in range(b_count):
            for y in range(h):
                for x in range(w):
                    if holes[b, y, x]:
                        for ch in range(c):
                            out[b, ch, y, x] = np.float32(painted[b, y, x, ch]) / scale

    _kernel = (njit(numba, context), njit(numba, paste))
    return _kernel


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable and not disabled)."""
    return _compile() is not None


def inpaint_context(
    image: torch.Tensor,
    holes: torch.Tensor,
    disparity: torch.Tensor | None,
    background_right: bool,
    guard: int,
) -> np.ndarray:
    """``uint8`` ``[B,H,W,C]`` context for the inpainting of float32 CPU ``image`` ``[B,C,H,W]``
    with bool ``holes`` ``[B,1,H,W]``: hole pixels and the foreground band beside them carry
    the background fill, everything else the image (as ``fill_holes``'s torch ops make it)."""
    kernel = _compile()
    if kernel is None:
        raise RuntimeError(f"the compiled fill kernel is unavailable: {_import_error}")
    b, c, h, w = image.shape
    img = image.detach().contiguous().numpy()
    hol = holes.contiguous().view(b, h, w).numpy()
    has_disp = disparity is not None
    disp = (
        disparity.detach().float().contiguous().view(b, h, w).numpy()
        if has_disp
        else np.zeros((1, 1, 1), np.float32)
    )
    means = image.mean(dim=(-2, -1)).contiguous().numpy()  # for rows without any valid pixel
    out = np.empty((b, h, w, c), np.uint8)
    kernel[0](img, hol, disp, has_disp, background_right, int(guard), means, out)
    return out


def paste_painted(image: torch.Tensor, painted: np.ndarray, holes: torch.Tensor) -> torch.Tensor:
    """A copy of float32 CPU ``image`` ``[B,C,H,W]`` with the ``uint8`` ``[B,H,W,C]`` ``painted``
    pixels (scaled to [0, 1]) in its ``holes``: ``torch.where(holes, painted / 255, image)``
    without the frame-sized temporaries."""
    kernel = _compile()
    if kernel is None:
        raise RuntimeError(f"the compiled fill kernel is unavailable: {_import_error}")
    b, _, h, w = image.shape
    out = image.detach().clone(memory_format=torch.contiguous_format)
    kernel[1](out.numpy(), np.ascontiguousarray(painted), holes.contiguous().view(b, h, w).numpy())
    return out
