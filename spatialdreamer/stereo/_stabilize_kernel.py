"""The per-pixel arithmetic of :class:`spatialdreamer.stereo.stabilize.DepthStabilizer` as one
compiled pass each (numba), for float32 maps on CPUs.

The torch formulation takes about fifteen frame-sized ops per frame and three more per frame of
look-ahead; at 1280×720 that was 25 CPU-ms per frame without look-ahead and 40 with 4 frames,
a fifth of the converter's whole budget. Here the source change and the update are single
passes, and each look-ahead frame is one more. Without numba the torch ops run.
"""

from __future__ import annotations

import numpy as np
import torch

from spatialdreamer.dvg._warp_kernel import Kernels, njit

__all__ = ["available", "change", "look_ahead", "update"]


def _change(previous, current, threshold, out):
    """``out`` = ((max over channels of |current - previous|) - threshold) / threshold in [0, 1]."""
    c, n = current.shape
    t = np.float32(threshold)
    for i in range(n):
        m = np.float32(0.0)
        for ch in range(c):
            d = abs(current[ch, i] - previous[ch, i])
            if d > m:
                m = d
        v = (m - t) / t
        out[i] = min(max(v, np.float32(0.0)), np.float32(1.0))


def _look_ahead(target, count, alive, later, later_moving):
    """Fold one later estimate into the look-ahead mean where the pixel is still up to it."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(target.shape[0]):
        a = alive[i] * (one if later_moving[i] == zero else zero)
        alive[i] = a
        target[i] += a * later[i]
        count[i] += a


def _update(held, still, depth, target, count, moving, keep, slowest, band, new_held, new_still):
    """The stabiliser's step (see its docstring) into ``new_held`` and ``new_still``."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    share = np.float32(keep)
    low = np.float32(slowest)
    b = np.float32(band)
    for i in range(held.shape[0]):
        m = moving[i]
        n = np.float32(0.0) if m > 0 else still[i] + one
        new_still[i] = n
        s = share * max(one / ((n + one) * (n + one)), low)
        rate = s + (one - s) * m
        if m > 0:
            gap = depth[i] - held[i]
        else:  # a still pixel follows only the part of the gap beyond the dead band
            gap = target[i] / count[i] - held[i]
            gap = max(gap - b, zero) if gap > zero else min(gap + b, zero)
        new_held[i] = held[i] + rate * gap


def _build(numba):
    return njit(numba, _change), njit(numba, _look_ahead), njit(numba, _update)


_kernels = Kernels(_build)


def available() -> bool:
    """Whether the compiled kernels can run here (numba importable and not disabled)."""
    return _kernels.get() is not None


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(-1).numpy()


def change(previous: torch.Tensor, current: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[1,1,H,W]``: how far each pixel's change between two ``[1,C,H,W]`` frames is above
    ``threshold``, as a share of it, in [0, 1] (the motion mask before widening)."""
    _, c, h, w = current.shape
    out = np.empty(h * w, np.float32)
    prev = previous.detach().contiguous().view(c, h * w).numpy()
    cur = current.detach().contiguous().view(c, h * w).numpy()
    _kernels.get()[0](prev, cur, threshold, out)
    return torch.from_numpy(out).view(1, 1, h, w)


def look_ahead(depth: torch.Tensor, laters) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)`` over ``depth`` and the ``(later, later_moving)`` estimates for as long
    as the pixel stays still; their ratio is the look-ahead mean."""
    target = depth.detach().contiguous().clone()
    count = torch.ones_like(target)
    alive = _flat(torch.ones_like(target))
    kernel = _kernels.get()[1]
    for later, later_moving in laters:
        kernel(_flat(target), _flat(count), alive, _flat(later), _flat(later_moving))
    return target, count


def update(
    held: torch.Tensor,
    still: torch.Tensor,
    depth: torch.Tensor,
    target: torch.Tensor,
    count: torch.Tensor,
    moving: torch.Tensor,
    keep: float,
    slowest: float,
    band: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(held, still)`` maps: the stabiliser's step with still-rate share ``keep`` and a
    dead band of ``band`` on still pixels' gap to their target."""
    new_held, new_still = torch.empty_like(held), torch.empty_like(still)
    maps = (held, still, depth, target, count, moving)
    _kernels.get()[2](*map(_flat, maps), keep, slowest, band, _flat(new_held), _flat(new_still))
    return new_held, new_still
