"""The CPU forward warp as one compiled pass per row (numba), bit-identical to the torch path.

:func:`spatialdreamer.dvg.warp.forward_warp` runs the same algorithm as about forty
elementwise torch ops over the whole frame (that is the code the CUDA path runs). On a CPU
each of those ops is a pass over memory and, with several threads, an OpenMP barrier; on a
busy machine the barriers dominate. Here each row is read once into a small scratch buffer
and warped in two sequential scans (splat, then resolve) with every value computed in the
same float32 order as the torch ops, so the outputs are equal to the last bit. Rows are
independent; they are shared among plain Python threads (the kernel releases the GIL), which
block instead of spinning while they wait.

numba is optional at run time: without it (or for float16/float64 images, or tensors that
need a gradient) the torch path runs instead.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["available", "warp_rows_cpu"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


# the kernels' code, compiled by _build (numba resolves ``_splat_row_jit`` when it compiles
# them; a dispatcher held in a closure would make numba's disk cache miss every time)
_splat_row_jit = None


def _splat_row(d, v, w, tau, best, rightmost, opens, joins, fragment):
    """The splat and resolve of one row (in working coordinates): ``best[t]`` the largest
    source column seen at target ``t``, -1 where none is or where what it sees shows through a
    disocclusion gap of a nearer segment (a layered hole); ``rightmost[t]`` the rightmost
    source whose first target is ``t``, ``opens``/``joins`` its depth edges and surfaces.
    Shared by the float and the uint8 warp, which then sample ``best``."""
    half = np.float32(0.5)
    tiny = np.float32(1e-6)
    zero = np.float32(0.0)
    minus_one = np.float32(-1.0)
    for x in range(w):
        best[x] = minus_one
        rightmost[x] = -1
    for x in range(w - 1):
        both = v[x] and v[x + 1]
        opens[x] = both and d[x + 1] - d[x] < -tau
        joins[x] = both and abs(d[x + 1] - d[x]) <= tau
    opens[w - 1] = False
    joins[w - 1] = False
    # ramp fragments: segments of one or two pixels between two opening edges
    for x in range(w):
        open_left = x > 0 and opens[x - 1]
        single = open_left and opens[x]
        first_of_two = open_left and x < w - 1 and joins[x] and opens[x + 1]
        second_of_two = x > 1 and joins[x - 1] and opens[x - 2] and opens[x]
        fragment[x] = single or first_of_two or second_of_two
    # splat: each source covers [lo, hi) and the largest source column wins a target
    for x in range(w):
        if not v[x] or fragment[x]:
            continue
        fx = np.float32(x)
        p = fx - d[x]
        first_target = np.ceil(p)
        if first_target < zero:
            first_target = zero
        if first_target < w:
            rightmost[np.int64(first_target)] = x
        joined_left = x > 0 and joins[x - 1]
        joined_right = joins[x]
        p_next = np.float32(x + 1) - d[x + 1] if x < w - 1 else p
        lo = p if joined_left else p - half
        hi = p_next if joined_right else p + half
        first = np.ceil(lo)
        count = np.ceil(hi) - first
        seg_len = p_next - p
        if seg_len < tiny:
            seg_len = tiny
        for k in range(np.int64(count)):
            t = first + np.float32(k)
            if t < zero or t >= w:
                continue
            xs = fx + (t - p) / seg_len if (t >= p and joined_right) else fx
            ti = np.int64(t)
            if xs > best[ti]:
                best[ti] = xs
    # resolve: the nearest segment over target t starts at x_star; what lands in the gap of
    # its opening edge from farther away than the far side of that edge is hidden
    x_star = -1
    for t in range(w):
        if rightmost[t] > x_star:
            x_star = rightmost[t]
        sx = best[t]
        if sx >= zero and 0 <= x_star < w - 1 and opens[x_star] and sx < x_star:
            x0 = np.floor(sx)
            frac = sx - x0
            i0 = np.int64(x0)
            i1 = min(i0 + 1, w - 1)
            if d[i0] + frac * (d[i1] - d[i0]) < d[x_star + 1] - tau:
                best[t] = minus_one


def _warp_rows(img, disp, valid, has_valid, flip, tau, r0, r1, out_img, out_disp, holes, source_x):
    _, c, h, w = img.shape
    tau = np.float32(tau)
    zero = np.float32(0.0)
    minus_one = np.float32(-1.0)
    last = np.float32(w - 1)
    d = np.empty(w, np.float32)
    v = np.ones(w, np.bool_)
    best = np.empty(w, np.float32)
    rightmost = np.empty(w, np.int64)
    opens = np.zeros(w, np.bool_)  # opens[x]: the edge x | x+1 is a disocclusion
    joins = np.zeros(w, np.bool_)  # joins[x]: x and x+1 lie on one surface
    fragment = np.empty(w, np.bool_)
    for r in range(r0, r1):
        b = r // h
        y = r - b * h
        # the row in working coordinates (mirrored for a warp towards the left eye)
        for x in range(w):
            a = w - 1 - x if flip else x
            d[x] = disp[b, y, a]
            if has_valid:
                v[x] = valid[b, y, a]
        _splat_row_jit(d, v, w, tau, best, rightmost, opens, joins, fragment)
        # sample (the splat left -1 in holes, layered ones included)
        for t in range(w):
            a = w - 1 - t if flip else t
            sx = best[t]
            hole = sx < zero
            if not hole:
                x0 = np.floor(sx)
                frac = sx - x0
                i0 = np.int64(x0)
                i1 = min(i0 + 1, w - 1)
                seen_disp = d[i0] + frac * (d[i1] - d[i0])
            holes[b, y, a] = hole
            if hole:
                for ch in range(c):
                    out_img[b, ch, y, a] = 0
                out_disp[b, y, a] = zero
                source_x[b, y, a] = minus_one
            else:
                j0 = w - 1 - i0 if flip else i0
                j1 = w - 1 - i1 if flip else i1
                for ch in range(c):
                    g0 = img[b, ch, y, j0]
                    out_img[b, ch, y, a] = g0 + frac * (img[b, ch, y, j1] - g0)
                out_disp[b, y, a] = seen_disp
                source_x[b, y, a] = last - sx if flip else sx


def _warp_rows_u8(img, disp, share, pad, flip, tau, r0, r1, out, holes, out_disp):
    """As ``warp_rows`` (no valid mask) of the frame mirrored outwards by ``pad`` columns
    on both sides (``F.pad(..., mode="reflect")``) with its disparity scaled by ``share``,
    keeping only the frame's own columns: written as ``uint8`` ``[B,H,W,C]`` (as
    ``clamp(0, 1) * 255 + 0.5`` rounds), with the holes and the warped disparity."""
    _, c, h, w = img.shape
    wide = w + 2 * pad
    tau = np.float32(tau)
    share = np.float32(share)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    half = np.float32(0.5)
    scale = np.float32(255.0)
    d = np.empty(wide, np.float32)
    v = np.ones(wide, np.bool_)
    best = np.empty(wide, np.float32)
    rightmost = np.empty(wide, np.int64)
    opens = np.zeros(wide, np.bool_)
    joins = np.zeros(wide, np.bool_)
    fragment = np.empty(wide, np.bool_)
    column = np.empty(wide, np.int64)  # working column -> the frame's column it mirrors
    for x in range(wide):
        a = wide - 1 - x if flip else x
        s = a - pad
        if s < 0:
            s = -s
        elif s >= w:
            s = 2 * (w - 1) - s
        column[x] = s
    for r in range(r0, r1):
        b = r // h
        y = r - b * h
        for x in range(wide):
            d[x] = disp[b, y, column[x]] * share if share != one else disp[b, y, column[x]]
        _splat_row_jit(d, v, wide, tau, best, rightmost, opens, joins, fragment)
        for t in range(wide):
            a = wide - 1 - t if flip else t
            o = a - pad
            if o < 0 or o >= w:
                continue
            sx = best[t]
            hole = sx < zero
            if not hole:
                x0 = np.floor(sx)
                frac = sx - x0
                i0 = np.int64(x0)
                i1 = min(i0 + 1, wide - 1)
                seen_disp = d[i0] + frac * (d[i1] - d[i0])
            holes[b, y, o] = hole
            if hole:
                for ch in range(c):
                    out[b, y, o, ch] = 0
                out_disp[b, y, o] = zero
            else:
                j0 = column[i0]
                j1 = column[i1]
                for ch in range(c):
                    g0 = img[b, ch, y, j0]
                    value = g0 + frac * (img[b, ch, y, j1] - g0)
                    value = min(max(value, zero), one)
                    out[b, y, o, ch] = np.uint8(value * scale + half)
                out_disp[b, y, o] = seen_disp


def _max_rows(src, radius, r0, r1, out):
    """``out[r, x]`` = max of ``src[r, x - radius .. x + radius]`` (within the row)."""
    w = src.shape[1]
    for r in range(r0, r1):
        for x in range(w):
            m = src[r, x]
            for k in range(max(0, x - radius), min(w, x + radius + 1)):
                if src[r, k] > m:
                    m = src[r, k]
            out[r, x] = m


def _max_columns(src, radius, r0, r1, out):
    """``out[b, y, x]`` = max of ``src[b, y - radius .. y + radius, x]`` (within the frame),
    for rows ``r = b * h + y`` in ``[r0, r1)``."""
    _, h, w = src.shape
    for r in range(r0, r1):
        b = r // h
        y = r - b * h
        for x in range(w):
            out[b, y, x] = src[b, y, x]
        for k in range(max(0, y - radius), min(h, y + radius + 1)):
            for x in range(w):
                if src[b, k, x] > out[b, y, x]:
                    out[b, y, x] = src[b, k, x]


def _build(numba):
    global _splat_row_jit
    _splat_row_jit = njit(numba, _splat_row)
    return (
        njit(numba, _warp_rows),
        njit(numba, _warp_rows_u8),
        njit(numba, _max_rows),
        njit(numba, _max_columns),
    )


def load_numba():
    """``(numba, None)``, or ``(None, reason)`` when the compiled kernels are off: numba is
    optional (the torch ops are the fallback) and ``SPATIALDREAMER_WARP_KERNEL=torch``
    switches them off."""
    if os.environ.get("SPATIALDREAMER_WARP_KERNEL", "").lower() == "torch":
        return None, "SPATIALDREAMER_WARP_KERNEL=torch"
    try:
        import numba
    except ImportError as exc:
        return None, f"numba is not installed ({exc})"
    return numba, None


def njit(numba, fn):
    """``fn`` compiled without the GIL, its machine code cached on disk when a cache folder is
    writable (else compiled again in each process: about a second)."""
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False)(fn)
    except RuntimeError:  # numba: "cannot cache function ... no locator available"
        return numba.njit(nogil=True, boundscheck=False)(fn)


class Kernels:
    """Compiled kernels built once, on first use: ``get()`` is what ``build(numba)`` returned,
    or ``None`` when numba is off (``reason`` says why). Thread-safe."""

    def __init__(self, build) -> None:
        self._build = build
        self._kernels = None
        self._done = False
        self._lock = threading.Lock()
        self.reason: str | None = None

    def get(self):
        if not self._done:
            with self._lock:
                if not self._done:
                    numba, self.reason = load_numba()
                    if numba is not None:
                        self._kernels = self._build(numba)
                    self._done = True
        return self._kernels


_kernels = Kernels(_build)


def available() -> bool:
    """Whether the compiled CPU kernel can run here (numba importable and not disabled)."""
    return _kernels.get() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _kernels.get()
    return _kernels.reason


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="spatialdreamer-warp")
            _pool_size = workers
        return _pool


def pool(threads: int | None = None) -> ThreadPoolExecutor | None:
    """The kernels' thread pool for ``threads`` workers (default ``torch.get_num_threads()``),
    ``None`` for one."""
    workers = max(1, int(threads if threads is not None else torch.get_num_threads()))
    return None if workers == 1 else _executor(workers)


# below this many pixels one thread is faster than handing rows to others
_PARALLEL_PIXELS = 1 << 16


def run_rows(kernel, before: tuple, after: tuple, rows: int, pixels: int, threads: int | None) -> None:
    """``kernel(*before, r0, r1, *after)`` over rows ``[0, rows)``, shared among ``threads``
    pool threads (default ``torch.get_num_threads()``) in a few blocks per thread, so that a
    thread slowed by another process does not hold up the frame: the others take its
    remaining blocks."""
    workers = max(1, int(threads if threads is not None else torch.get_num_threads()))
    if workers == 1 or rows < 2 or pixels < _PARALLEL_PIXELS:
        kernel(*before, 0, rows, *after)
        return
    blocks = min(rows, workers * 4)
    bounds = [rows * i // blocks for i in range(blocks + 1)]
    pool = _executor(workers)
    futures = [
        pool.submit(kernel, *before, lo, hi, *after)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        if hi > lo
    ]
    for future in futures:
        future.result()


def warp_rows_cpu(
    image: torch.Tensor,
    disparity: torch.Tensor,
    valid: torch.Tensor | None,
    tau: float,
    flip: bool,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp float32 ``image`` ``[B,C,H,W]`` by float32 ``disparity`` ``[B,1,H,W]`` leftwards
    (rightwards with ``flip``); returns ``(image, holes, disparity, source_x)`` as
    :class:`~spatialdreamer.dvg.warp.WarpResult` holds them (disparity still float32).

    ``threads`` defaults to ``torch.get_num_threads()`` (see :mod:`spatialdreamer.runtime`)."""
    kernels = _kernels.get()
    if kernels is None:
        raise RuntimeError(f"the compiled warp kernel is unavailable: {_kernels.reason}")
    b, c, h, w = image.shape
    img = image.detach().contiguous().numpy()
    disp = disparity.detach().contiguous().view(b, h, w).numpy()
    has_valid = valid is not None
    val = valid.contiguous().view(b, h, w).numpy() if has_valid else np.ones((1, 1, 1), np.bool_)
    out_img = torch.empty((b, c, h, w), dtype=image.dtype)
    out_disp = torch.empty((b, 1, h, w), dtype=torch.float32)
    holes = torch.empty((b, 1, h, w), dtype=torch.bool)
    source_x = torch.empty((b, 1, h, w), dtype=torch.float32)
    outs = (out_img.numpy(), out_disp.view(b, h, w).numpy(), holes.view(b, h, w).numpy())
    outs = (*outs, source_x.view(b, h, w).numpy())
    run_rows(kernels[0], (img, disp, val, has_valid, flip, tau), outs, b * h, b * h * w, threads)
    return out_img, holes, out_disp, source_x


def dilate_cpu(disparity: torch.Tensor, radius: tuple[int, int], threads: int | None = None) -> torch.Tensor:
    """:func:`~spatialdreamer.dvg.disparity.dilate_foreground` of float32 CPU ``disparity``
    ``[B,1,H,W]`` (a ``(2y+1, 2x+1)`` max filter) in two compiled passes; the same values
    (for disparities without NaN)."""
    rx, ry = radius
    if rx == 0 and ry == 0:
        return disparity
    kernels = _kernels.get()
    if kernels is None:
        raise RuntimeError(f"the compiled warp kernel is unavailable: {_kernels.reason}")
    b, _, h, w = disparity.shape
    src = disparity.detach().contiguous().view(b, h, w).numpy()
    if rx > 0:
        across = np.empty_like(src)
        run_rows(
            kernels[2],
            (src.reshape(b * h, w), min(rx, w - 1)),
            (across.reshape(b * h, w),),
            b * h,
            b * h * w,
            threads,
        )
        src = across
    if ry > 0:
        out = np.empty_like(src)
        run_rows(kernels[3], (src, min(ry, h - 1)), (out,), b * h, b * h * w, threads)
        src = out
    return torch.from_numpy(src).view(b, 1, h, w)


def warp_rows_u8_cpu(
    image: torch.Tensor,
    disparity: torch.Tensor,
    share: float,
    pad: int,
    flip: bool,
    out: np.ndarray,
    tau: float = 1.0,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The warp of ``StereoRenderer``, straight into a ``uint8`` frame: float32 ``image``
    ``[B,C,H,W]`` and float32 ``disparity`` ``[B,1,H,W]`` (scaled by ``share``), both mirrored
    outwards by ``pad`` columns (as ``F.pad(mode="reflect")``), warped leftwards (rightwards
    with ``flip``) and cropped back, written into ``out`` (``uint8`` ``[B,H,W,C]``, any
    strides: e.g. one half of a side-by-side frame) as ``clamp(0, 1) * 255 + 0.5`` rounds the
    float warp; returns ``(holes, disparity)`` ``[B,H,W]`` of the warped view."""
    kernels = _kernels.get()
    if kernels is None:
        raise RuntimeError(f"the compiled warp kernel is unavailable: {_kernels.reason}")
    b, c, h, w = image.shape
    if not 0 <= pad < w:
        raise ValueError(f"pad must be in [0, {w}), got {pad}")
    img = image.detach().contiguous().numpy()
    disp = disparity.detach().contiguous().view(b, h, w).numpy()
    holes = np.empty((b, h, w), np.bool_)
    out_disp = np.empty((b, h, w), np.float32)
    before = (img, disp, float(share), int(pad), bool(flip), float(tau))
    run_rows(kernels[1], before, (out, holes, out_disp), b * h, b * h * w, threads)
    return holes, out_disp
