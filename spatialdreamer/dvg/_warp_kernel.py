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

_kernel = None
_import_error: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _compile():
    global _kernel, _import_error
    if _kernel is not None or _import_error is not None:
        return _kernel
    numba, _import_error = load_numba()
    if numba is None:
        return None

    def warp_rows(img, disp, valid, has_valid, flip, tau, r0, r1, out_img, out_disp, holes, source_x):
        _, c, h, w = img.shape
        tau = np.float32(tau)
        half = np.float32(0.5)
        tiny = np.float32(1e-6)
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
                best[x] = minus_one
                rightmost[x] = -1
            for x in range(w - 1):
                both = v[x] and v[x + 1]
                opens[x] = both and d[x + 1] - d[x] < -tau
                joins[x] = both and abs(d[x + 1] - d[x]) <= tau
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
            # resolve: sample, and hide what shows through a disocclusion gap (layered holes)
            x_star = -1
            for t in range(w):
                if rightmost[t] > x_star:
                    x_star = rightmost[t]
                a = w - 1 - t if flip else t
                sx = best[t]
                hole = sx < zero
                if not hole:
                    x0 = np.floor(sx)
                    frac = sx - x0
                    i0 = np.int64(x0)
                    i1 = min(i0 + 1, w - 1)
                    seen_disp = d[i0] + frac * (d[i1] - d[i0])
                    if (
                        x_star >= 0
                        and x_star < w - 1
                        and opens[x_star]
                        and sx < x_star
                        and seen_disp < d[x_star + 1] - tau
                    ):
                        hole = True
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

    _kernel = njit(numba, warp_rows)
    return _kernel


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


def available() -> bool:
    """Whether the compiled CPU kernel can run here (numba importable and not disabled)."""
    return _compile() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _compile()
    return _import_error


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="spatialdreamer-warp")
            _pool_size = workers
        return _pool


# below this many pixels one thread is faster than handing rows to others
_PARALLEL_PIXELS = 1 << 16


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
    kernel = _compile()
    if kernel is None:
        raise RuntimeError(f"the compiled warp kernel is unavailable: {_import_error}")
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
    rows = b * h
    workers = max(1, int(threads if threads is not None else torch.get_num_threads()))
    if workers == 1 or rows < 2 or rows * w < _PARALLEL_PIXELS:
        kernel(img, disp, val, has_valid, flip, tau, 0, rows, *outs)
    else:
        # a few blocks per worker, so that a worker slowed by another process does not hold
        # up the frame: the others take its remaining blocks
        blocks = min(rows, workers * 4)
        bounds = [rows * i // blocks for i in range(blocks + 1)]
        pool = _executor(workers)
        futures = [
            pool.submit(kernel, img, disp, val, has_valid, flip, tau, lo, hi, *outs)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            if hi > lo
        ]
        for future in futures:
            future.result()
    return out_img, holes, out_disp, source_x
