"""Depth-ordered forward warp along the epipolar (horizontal) axis.

Why no depth sort: for a horizontal shift ``p(x) = x - d(x)``, two source pixels that land on
the same target satisfy ``d2 - d1 = x2 - x1``, so the one further right is always the nearer
one. Using the source column as the z-buffer key turns the nearest-wins rule into a linear
time ``scatter_reduce(amax)`` instead of an ``O(N log N)`` sort of every pixel.

Each row is treated as a surface: neighbouring pixels whose disparities differ by at most
``edge_threshold`` pixels are joined by a linear segment, so stretched surfaces are
interpolated (sub-pixel, no gaps that background could leak through) while depth edges are
never blended. A depth edge that opens up in the target view (a disocclusion) leaves a hole;
anything farther than both sides of that edge that lands inside it is a *layered hole*: the
background would otherwise show through a gap in the foreground.

A *steep ramp* (disparity falling faster than ``edge_threshold`` per pixel towards the right,
as soft depth edges from learned depth models do) is a run of depth edges: splatting each of
its pixels alone leaves alternating one-pixel holes (a comb) that the fill turns into stripes.
A segment of one or two pixels with an opening edge on both sides is such a
fragment: it is not splatted, so the ramp opens one contiguous disocclusion, while it still
bounds the gap (background behind it stays hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from spatialdreamer.dvg import _warp_kernel

__all__ = ["WarpResult", "forward_warp"]


@dataclass
class WarpResult:
    """Output of :func:`forward_warp`.

    Attributes:
        image: ``[B,C,H,W]`` warped image, zero inside holes.
        holes: ``[B,1,H,W]`` bool, True where no source pixel is visible (including layered
            holes).
        disparity: ``[B,1,H,W]`` disparity of the target view (same sign convention, zero in
            holes): warping ``image`` back with it returns to the source eye.
        source_x: ``[B,1,H,W]`` float source column each target pixel was sampled from,
            ``-1`` in holes.
    """

    image: torch.Tensor
    holes: torch.Tensor
    disparity: torch.Tensor
    source_x: torch.Tensor


def _check_inputs(image: torch.Tensor, disparity: torch.Tensor, valid: torch.Tensor | None) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must be [B,C,H,W], got shape {tuple(image.shape)}")
    b, _, h, w = image.shape
    if disparity.shape != (b, 1, h, w):
        raise ValueError(
            f"disparity must be [B,1,H,W] = {(b, 1, h, w)} to match image, got {tuple(disparity.shape)}"
        )
    if not image.is_floating_point() or not disparity.is_floating_point():
        raise TypeError("image and disparity must be floating point tensors")
    if image.device != disparity.device:
        raise ValueError(f"image on {image.device} but disparity on {disparity.device}")
    if valid is not None and (valid.shape != (b, 1, h, w) or valid.dtype != torch.bool):
        raise ValueError(
            f"valid must be a bool tensor of shape {(b, 1, h, w)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    if w < 2:
        raise ValueError(f"image must be at least 2 pixels wide, got width {w}")


def forward_warp(
    image: torch.Tensor,
    disparity: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    towards: Literal["right", "left"] = "right",
    edge_threshold: float = 1.0,
    backend: Literal["auto", "torch", "compiled"] = "auto",
) -> WarpResult:
    """Warp ``image`` to the other eye with a depth-ordered, sub-pixel forward splat.

    Args:
        image: ``[B,C,H,W]`` float, any value range.
        disparity: ``[B,1,H,W]`` float, pixels; larger = nearer. With ``towards="right"``
            (left input → right-eye view) a pixel at column ``x`` lands at ``x - d``; with
            ``towards="left"`` (right input → left-eye view) at ``x + d``.
        valid: optional ``[B,1,H,W]`` bool; False pixels are not sources (e.g. holes of an
            earlier warp) and neither cover nor occlude anything.
        towards: which eye the output is for (see ``disparity``).
        edge_threshold: disparity step in pixels, in ``(0, 1]``, above which two neighbours
            are on different surfaces (a depth edge) rather than one slanted surface.
        backend: ``"auto"`` runs the compiled row kernel for float32 CPU tensors that need no
            gradient (when numba is installed) and the torch ops otherwise (CUDA, other
            dtypes); ``"torch"`` forces the torch ops; ``"compiled"`` requires the kernel and
            raises if it cannot run. Both give bit-identical results.

    Returns:
        :class:`WarpResult` with ``.image``, ``.holes``, ``.disparity`` and ``.source_x``.

    Example:
        >>> img = torch.arange(8.0).view(1, 1, 1, 8)
        >>> out = forward_warp(img, torch.full((1, 1, 1, 8), 2.0))
        >>> out.image[0, 0, 0].tolist(), out.holes[0, 0, 0].tolist()[-2:]
        ([2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0], [True, True])
    """
    _check_inputs(image, disparity, valid)
    if not 0.0 < edge_threshold <= 1.0:
        raise ValueError(f"edge_threshold must be in (0, 1], got {edge_threshold}")
    if towards not in ("right", "left"):
        raise ValueError(f"towards must be 'right' or 'left', got {towards!r}")
    if backend not in ("auto", "torch", "compiled"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'compiled', got {backend!r}")
    if backend != "torch" and _compiled_applies(image, disparity, backend == "compiled"):
        out_image, holes, out_disparity, source_x = _warp_kernel.warp_rows_cpu(
            image, disparity.float(), valid, edge_threshold, flip=towards == "left"
        )
        return WarpResult(out_image, holes, out_disparity.to(disparity.dtype), source_x)
    if towards == "left":
        flipped = _warp_in_row_blocks(
            image.flip(-1), disparity.flip(-1), None if valid is None else valid.flip(-1), edge_threshold
        )
        return WarpResult(
            *(t.flip(-1) for t in (flipped.image, flipped.holes, flipped.disparity)),
            source_x=_mirror_source_x(flipped.source_x, image.shape[-1]),
        )
    return _warp_in_row_blocks(image, disparity, valid, edge_threshold)


def _compiled_applies(image: torch.Tensor, disparity: torch.Tensor, required: bool) -> bool:
    reason = None
    if image.device.type != "cpu":
        reason = f"it runs on the CPU, the tensors are on {image.device}"
    elif image.dtype != torch.float32:
        reason = f"it takes float32 images, got {image.dtype}"
    elif torch.is_grad_enabled() and (image.requires_grad or disparity.requires_grad):
        reason = "it gives no gradient"
    elif not _warp_kernel.available():
        reason = _warp_kernel.unavailable_reason()
    if reason is not None and required:
        raise ValueError(f"backend='compiled' cannot run: {reason}")
    return reason is None


_BLOCK_PIXELS = 1 << 19


def _warp_in_row_blocks(image, disparity, valid, tau) -> WarpResult:
    """Rows are independent: warping blocks of rows bounds the scratch memory at any size."""
    b, _, h, w = image.shape
    rows = max(1, _BLOCK_PIXELS // (b * w))
    if rows >= h:
        return _warp_leftwards(image, disparity, valid, tau)
    parts = [
        _warp_leftwards(
            image[:, :, y : y + rows],
            disparity[:, :, y : y + rows],
            None if valid is None else valid[:, :, y : y + rows],
            tau,
        )
        for y in range(0, h, rows)
    ]
    return WarpResult(
        *(
            torch.cat([getattr(part, name) for part in parts], 2)
            for name in ("image", "holes", "disparity", "source_x")
        )
    )


def _mirror_source_x(source_x: torch.Tensor, width: int) -> torch.Tensor:
    mirrored = (width - 1) - source_x.flip(-1)
    return torch.where(source_x.flip(-1) < 0, source_x.flip(-1), mirrored)


def _warp_leftwards(
    image: torch.Tensor, disparity: torch.Tensor, valid: torch.Tensor | None, tau: float
) -> WarpResult:
    b, c, h, w = image.shape
    device = image.device
    d = disparity[:, 0].float()  # [B,H,W]
    col = torch.arange(w, device=device, dtype=torch.float32)
    p = col - d  # landing column of every source pixel

    # Neighbours joined into one surface segment (x -> x+1).
    step = d[..., 1:] - d[..., :-1]
    joined = step.abs() <= tau
    if valid is not None:
        v = valid[:, 0]
        joined &= v[..., 1:] & v[..., :-1]
    false_col = torch.zeros_like(joined[..., :1])
    joined_right = torch.cat([joined, false_col], -1)
    joined_left = torch.cat([false_col, joined], -1)
    p_next = torch.cat([p[..., 1:], p[..., -1:]], -1)

    # Each source pixel covers [lo, hi): up to its right neighbour along a surface, half a
    # pixel around itself at a depth edge.
    lo = torch.where(joined_left, p, p - 0.5)
    hi = torch.where(joined_right, p_next, p + 0.5)
    first = torch.ceil(lo)
    count = (torch.ceil(hi) - first).clamp_(min=0)
    opening = step < -tau
    if valid is not None:
        opening &= valid[:, 0, :, 1:] & valid[:, 0, :, :-1]
    fragment = _ramp_fragments(opening, joined_left, joined_right)
    count.masked_fill_(fragment, 0)
    if valid is not None:
        count.masked_fill_(~valid[:, 0], 0)
    seg_len = (p_next - p).clamp_(min=1e-6)

    row_base = torch.arange(b * h, device=device).view(b, h, 1) * w
    n = b * h * w
    best = torch.full((n + 1,), -1.0, device=device)  # last slot swallows unused candidates

    max_count = int(count.max().item()) if n else 0
    for k in range(max_count):
        t = first + k
        ok = (count > k) & (t >= 0) & (t < w)
        if k == 0:
            xs = _sample_column(col, t, p, seg_len, joined_right)
            index = torch.where(ok, t.long() + row_base, n)
            best.scatter_reduce_(0, index.reshape(-1), xs.reshape(-1), "amax")
        else:  # few pixels cover more than one target: only touch those
            sel = ok.nonzero(as_tuple=True)
            xs = _sample_column(col[sel[2]], t[sel], p[sel], seg_len[sel], joined_right[sel])
            index = t[sel].long() + row_base.expand(b, h, w)[sel]
            best.scatter_reduce_(0, index, xs, "amax")

    source_x = best[:n].view(b, h, w)
    seen = source_x >= 0
    x0 = source_x.clamp(min=0).floor()
    frac = (source_x.clamp(min=0) - x0).unsqueeze(1)
    i0 = x0.long().unsqueeze(1)
    i1 = (i0 + 1).clamp_(max=w - 1)
    stacked = torch.cat([image, disparity.to(image.dtype)], 1)
    # a + f * (b - a) as three separate ops (not torch.lerp, whose CPU kernel fuses a
    # multiply-add): every backend then rounds the same way, the compiled kernel included
    g0 = stacked.gather(-1, i0.expand(b, c + 1, h, w))
    out = g0 + frac.to(stacked.dtype) * (stacked.gather(-1, i1.expand(b, c + 1, h, w)) - g0)
    holes = ~seen | _layered_holes(d, p, opening, source_x, out[:, c].float(), valid, fragment, tau)
    out.masked_fill_(holes.unsqueeze(1), 0)
    return WarpResult(
        image=out[:, :c],
        holes=holes.unsqueeze(1),
        disparity=out[:, c:].to(disparity.dtype),
        source_x=source_x.masked_fill(holes, -1.0).unsqueeze(1),
    )


def _sample_column(col, t, p, seg_len, joined_right):
    """Source column seen at target ``t``: interpolated along a surface, else the pixel itself."""
    x = col.expand_as(t) if col.shape != t.shape else col
    along = x + (t - p) / seg_len
    return torch.where((t >= p) & joined_right, along, x)


def _ramp_fragments(opening, joined_left, joined_right):
    """Pixels of segments of one or two pixels that have an opening depth edge on both sides."""
    false_col = torch.zeros_like(opening[..., :1])
    open_left = torch.cat([false_col, opening], -1)  # edge between x-1 and x opens
    open_right = torch.cat([opening, false_col], -1)  # edge between x and x+1 opens
    right_of = torch.cat([open_right[..., 1:], false_col], -1)  # edge between x+1 and x+2
    left_of = torch.cat([false_col, open_left[..., :-1]], -1)  # edge between x-2 and x-1
    single = open_left & open_right
    return single | (joined_right & open_left & right_of) | (joined_left & left_of & open_right)


def _layered_holes(d, p, opening, source_x, seen_disp, valid, fragment, tau):
    """Targets where the visible surface lies behind a disocclusion gap of a nearer surface.

    A disocclusion edge between source ``x`` (near) and ``x+1`` (farther) opens the target
    interval ``(p(x), p(x+1))``. Whatever lands there from farther away than ``d(x+1)`` must be
    hidden by the unseen side of that surface, so those targets are holes.

    The nearest segment over target ``t`` starts at the rightmost source ``x*`` with
    ``p(x*) <= t``, found in linear time as a running max over the columns where each source
    first lands; only that segment can be the gap in question.
    """
    b, h, w = d.shape
    device = d.device
    first_target = torch.ceil(p).clamp_(min=0)
    lands = (first_target < w) & ~fragment
    if valid is not None:
        lands &= valid[:, 0]
    row_base = torch.arange(b * h, device=device).view(b, h, 1) * w
    index = torch.where(lands, first_target.long() + row_base, b * h * w)
    col = torch.arange(w, device=device, dtype=torch.float32).expand(b, h, w)
    rightmost = torch.full((b * h * w + 1,), -1.0, device=device)
    rightmost.scatter_reduce_(0, index.reshape(-1), col.reshape(-1), "amax")
    x_star = rightmost[:-1].view(b, h, w).cummax(-1).values.long()

    opening = torch.cat([opening, torch.zeros_like(opening[..., :1])], -1)
    at = x_star.clamp(min=0)
    in_gap = (x_star >= 0) & opening.gather(-1, at)
    far_disp = d.gather(-1, (at + 1).clamp_(max=w - 1))
    return in_gap & (source_x >= 0) & (source_x < x_star) & (seen_disp < far_disp - tau)
