"""The inpainting context of :func:`spatialdreamer.stereo.fill_holes` as one compiled pass per
row (numba), equal to the torch ops it replaces on CPUs.

The torch path builds the context in about thirty frame-sized ops (two background
propagations, each with cumulative maxima, flips and gathers); here each row is scanned a few
times in place and the result is written straight into the ``uint8`` ``[H,W,C]`` layout that
OpenCV's inpainting reads. Without numba the torch ops run.

:func:`context_u8` builds the same context for a window of a ``uint8`` frame (the renderer's
path that never leaves ``uint8``, :func:`spatialdreamer.stereo.fill.fill_holes_u8`), and
:func:`fill_thin_u8` fills its thin holes as :func:`spatialdreamer.stereo.fill.fill_thin_holes`
does.
"""

from __future__ import annotations

import numpy as np
import torch

from spatialdreamer.dvg._warp_kernel import Kernels, njit

__all__ = ["available", "context_u8", "fill_thin_u8", "inpaint_context", "paste_painted", "paste_window"]


# the kernels' code, compiled by _build (numba resolves ``_row_sources_jit`` when it compiles
# them; a dispatcher held in a closure would make numba's disk cache miss every time)
_row_sources_jit = None


def _row_sources(row, d, has_disp, bg_right, guard, x0, x1, near, blocked, band, source, left, right):
    """For columns ``[x0, x1)`` of one row (``row``: its holes, ``d``: its disparity):
    ``blocked[x]`` the hole or the foreground band beside it, ``source[x]`` the column its
    context comes from (``x`` where not blocked, else the nearest unblocked column on the
    background side, the farther one with disparity; -1 in a row with none). With
    disparity, run twice: first to keep only the band pixels nearer than the background
    they hide, then for the context itself. Returns whether the row has any hole."""
    half = np.float32(0.5)
    step = 1 if bg_right else -1
    any_hole = False
    # foreground band beside each hole: within `guard` columns of one
    last_hole = -(1 << 40)
    for x in range(x0, x1):
        if row[x]:
            last_hole = x
            any_hole = True
        near[x] = x - last_hole <= guard
    if not any_hole:
        for x in range(x0, x1):
            blocked[x] = False
            source[x] = x
        return False
    last_hole = 1 << 40
    for x in range(x1 - 1, x0 - 1, -1):
        if row[x]:
            last_hole = x
        near[x] = near[x] or last_hole - x <= guard
    for x in range(x0, x1):
        band[x] = near[x] and not row[x]
    if not has_disp:  # the foreground is on the side opposite the background
        for x in range(x0, x1):
            if band[x]:
                fg = False
                for k in range(1, guard + 1):
                    t = x + k * step
                    if x0 <= t < x1 and row[t]:
                        fg = True
                band[x] = fg
    for rep in range(2 if has_disp else 1):
        for x in range(x0, x1):
            blocked[x] = row[x] or band[x]
        last = -1
        for x in range(x0, x1):
            if not blocked[x]:
                last = x
            left[x] = last
        last = -1
        for x in range(x1 - 1, x0 - 1, -1):
            if not blocked[x]:
                last = x
            right[x] = last
        for x in range(x0, x1):
            lo, hi = left[x], right[x]
            if not blocked[x]:
                source[x] = x
            elif hi >= 0 and (lo < 0 or (d[hi] <= d[lo] if has_disp else bg_right)):
                source[x] = hi
            else:
                source[x] = lo
        if has_disp and rep == 0:
            for x in range(x0, x1):
                if band[x]:
                    band[x] = d[x] > d[max(source[x], 0)] + half
    return True


def _context(img, holes, disp, has_disp, bg_right, guard, means, out):
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
    for b in range(b_count):
        for y in range(h):
            if has_disp:
                for x in range(w):
                    d[x] = disp[b, y, x]
            _row_sources_jit(
                holes[b, y], d, has_disp, bg_right, guard, 0, w, near, blocked, band, source, left, right
            )
            for x in range(w):
                s = source[x] if blocked[x] else x
                for ch in range(c):
                    v = img[b, ch, y, s] if s >= 0 else means[b, ch]
                    v = min(max(v, zero), one)
                    out[b, y, x, ch] = np.uint8(v * scale + half)


def _context_window(frame, holes, disp, bg_right, guard, y0, y1, x0, x1, out):
    """``out[y - y0, x - x0]``: the context of ``uint8`` ``frame`` ``[H,W,C]`` in the window;
    False when a row of it has a blocked pixel and no source (the frame's mean colour)."""
    w = frame.shape[1]
    c = frame.shape[2]
    near = np.empty(w, np.bool_)
    blocked = np.empty(w, np.bool_)
    band = np.empty(w, np.bool_)
    source = np.empty(w, np.int64)
    left = np.empty(w, np.int64)
    right = np.empty(w, np.int64)
    for y in range(y0, y1):
        _row_sources_jit(
            holes[y], disp[y], True, bg_right, guard, x0, x1, near, blocked, band, source, left, right
        )
        for x in range(x0, x1):
            s = source[x]
            if s < 0:
                return False
            for ch in range(c):
                out[y - y0, x - x0, ch] = frame[y, s, ch]
    return True


def _paste(out, painted, holes):
    b_count, c, h, w = out.shape
    scale = np.float32(255.0)
    for b in range(b_count):
        for y in range(h):
            for x in range(w):
                if holes[b, y, x]:
                    for ch in range(c):
                        out[b, ch, y, x] = np.float32(painted[b, y, x, ch]) / scale


def _fill_thin(frame, holes, disp, thin, rest, rest_disp):
    """Runs of at most ``thin`` holes along a row of ``uint8`` ``frame`` ``[H,W,C]`` take the
    pixel beside them with the smaller disparity (the right one on a tie, the one there is at
    the frame's edge); ``rest``/``rest_disp``: the holes left and the disparity with the
    filled runs' values."""
    h, w, c = frame.shape
    for y in range(h):
        x = 0
        while x < w:
            rest_disp[y, x] = disp[y, x]
            if not holes[y, x]:
                rest[y, x] = False
                x += 1
                continue
            end = x
            while end < w and holes[y, end]:
                end += 1
            lo = x - 1
            hi = end if end < w else -1
            fill = end - x <= thin and (lo >= 0 or hi >= 0)
            s = hi if hi >= 0 and (lo < 0 or disp[y, hi] <= disp[y, lo]) else lo
            for t in range(x, end):
                rest[y, t] = not fill
                if fill:
                    rest_disp[y, t] = disp[y, s]
                    for ch in range(c):
                        frame[y, t, ch] = frame[y, s, ch]
                else:
                    rest_disp[y, t] = disp[y, t]
            x = end


def _paste_window(frame, painted, holes, y0, x0):
    """``frame[y0 + y, x0 + x] = painted[y, x]`` where ``holes[y0 + y, x0 + x]``."""
    h, w, c = painted.shape
    for y in range(h):
        for x in range(w):
            if holes[y0 + y, x0 + x]:
                for ch in range(c):
                    frame[y0 + y, x0 + x, ch] = painted[y, x, ch]


def _build(numba):
    global _row_sources_jit
    _row_sources_jit = njit(numba, _row_sources)
    return (
        njit(numba, _context),
        njit(numba, _paste),
        njit(numba, _context_window),
        njit(numba, _fill_thin),
        njit(numba, _paste_window),
    )


_kernels = Kernels(_build)


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable and not disabled)."""
    return _kernels.get() is not None


def _get():
    kernels = _kernels.get()
    if kernels is None:
        raise RuntimeError(f"the compiled fill kernel is unavailable: {_kernels.reason}")
    return kernels


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
    kernel = _get()[0]
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
    kernel(img, hol, disp, has_disp, background_right, int(guard), means, out)
    return out


def context_u8(
    frame: np.ndarray,
    holes: np.ndarray,
    disparity: np.ndarray,
    background_right: bool,
    guard: int,
    window: tuple[int, int, int, int],
) -> np.ndarray | None:
    """The inpainting context (as :func:`inpaint_context` makes it) of the ``window``
    ``(y0, y1, x0, x1)`` of ``uint8`` ``frame`` ``[H,W,C]`` with bool ``holes`` and float32
    ``disparity`` ``[H,W]``: ``uint8`` ``[y1-y0, x1-x0, C]``. Equal to the whole frame's
    context there when the window reaches more than ``guard + 1`` columns past every hole of
    its rows (or the frame's edge). ``None`` when a row has no pixel to fill from (the whole
    frame's context would take the frame's mean colour there)."""
    y0, y1, x0, x1 = window
    out = np.empty((y1 - y0, x1 - x0, frame.shape[2]), np.uint8)
    ok = _get()[2](frame, holes, disparity, background_right, int(guard), y0, y1, x0, x1, out)
    return out if ok else None


def fill_thin_u8(
    frame: np.ndarray, holes: np.ndarray, disparity: np.ndarray, thin: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~spatialdreamer.stereo.fill.fill_thin_holes` of ``uint8`` ``frame`` ``[H,W,C]``
    (any strides) in place, with bool ``holes`` and float32 ``disparity`` ``[H,W]`` (left as
    they are): returns the holes left and the disparity with the filled runs' values."""
    rest = np.empty(holes.shape, np.bool_)
    rest_disp = np.empty(disparity.shape, np.float32)
    _get()[3](frame, holes, disparity, int(thin), rest, rest_disp)
    return rest, rest_disp


def paste_window(
    frame: np.ndarray, painted: np.ndarray, holes: np.ndarray, window: tuple[int, int, int, int]
) -> None:
    """The ``uint8`` ``painted`` pixels of ``window`` ``(y0, y1, x0, x1)`` into ``uint8``
    ``frame`` ``[H,W,C]`` (any strides) where bool ``holes`` ``[H,W]`` is set:
    ``np.copyto(frame[y0:y1, x0:x1], painted, where=holes[y0:y1, x0:x1, None])`` in one pass."""
    y0, _, x0, _ = window
    _get()[4](frame, painted, holes, int(y0), int(x0))


def paste_painted(image: torch.Tensor, painted: np.ndarray, holes: torch.Tensor) -> torch.Tensor:
    """A copy of float32 CPU ``image`` ``[B,C,H,W]`` with the ``uint8`` ``[B,H,W,C]`` ``painted``
    pixels (scaled to [0, 1]) in its ``holes``: ``torch.where(holes, painted / 255, image)``
    without the frame-sized temporaries."""
    kernel = _get()[1]
    b, _, h, w = image.shape
    out = image.detach().clone(memory_format=torch.contiguous_format)
    kernel(out.numpy(), np.ascontiguousarray(painted), holes.contiguous().view(b, h, w).numpy())
    return out
