"""Temporal refinement of occlusion masks.

Hole masks come from per-frame warps, so a hole can blink off for a frame where depth
wobbles. Frame t keeps all its holes and gains the pixels where both neighbours t-1 and t+1,
carried onto frame t by optical flow, agree on a hole, wherever that flow passes a
forward-backward check. Nothing is ever removed: a warp hole has no content, and a training
target must never pretend it has.

A hole is attached to the depth edge that casts it, not to the background it covers, so
masks are carried with the flow of the *occluder*: the nearest (largest-disparity) pixel
within one disparity range along the row, where the flow of the hole pixel itself would
follow the background.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spatialdreamer.dvg.flow import dis_flow, flow_warp, forward_backward_consistent

__all__ = ["occluder_flow", "refine_masks_temporally"]


def occluder_flow(
    flow: torch.Tensor, disparity: torch.Tensor, reach: int, extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Replace each pixel's flow by that of the nearest pixel within ``reach`` columns.

    ``flow`` ``[B,2,H,W]``, ``disparity`` ``[B,1,H,W]`` (larger = nearer). ``extra`` (e.g. a
    confidence map ``[B,1,H,W]``) is gathered from the same pixels.
    """
    k = 2 * reach + 1
    _, idx = F.max_pool2d(disparity, (1, k), stride=1, padding=(0, reach), return_indices=True)
    b, _, h, w = disparity.shape
    idx = idx.flatten(2)
    out = flow.flatten(2).gather(2, idx.expand(b, 2, h * w)).view(b, 2, h, w)
    if extra is None:
        return out, None
    return out, extra.flatten(2).gather(2, idx.expand(b, extra.shape[1], h * w)).view_as(extra)


def refine_masks_temporally(
    frames: torch.Tensor,
    masks: torch.Tensor,
    disparity: torch.Tensor,
    *,
    flow_forward: torch.Tensor | None = None,
    flow_backward: torch.Tensor | None = None,
    max_reach: int = 64,
) -> torch.Tensor:
    """Make each frame's hole mask consistent with its neighbours.

    Args:
        frames: ``[T,C,H,W]`` in [0, 1], the view the masks belong to (used for flow).
        masks: ``[T,1,H,W]`` bool, True = hole.
        disparity: ``[T,1,H,W]`` disparity of that view (pixels, larger = nearer); values
            inside holes are ignored.
        flow_forward: optional ``[T-1,2,H,W]`` flow t→t+1; estimated with DIS when omitted.
        flow_backward: optional ``[T-1,2,H,W]`` flow t+1→t; estimated when omitted.
        max_reach: cap, in pixels, on how far along a row the occluder is looked for.

    Returns:
        ``[T,1,H,W]`` bool, a superset of ``masks``.
    """
    if frames.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(
            f"frames must be [T,C,H,W] and masks [T,1,H,W], "
            f"got {tuple(frames.shape)} and {tuple(masks.shape)}"
        )
    if frames.shape[0] != masks.shape[0] or frames.shape[2:] != masks.shape[2:]:
        raise ValueError(
            f"frames {tuple(frames.shape)} and masks {tuple(masks.shape)} differ in length or size"
        )
    if disparity.shape != masks.shape:
        raise ValueError(f"disparity must be [T,1,H,W] = {tuple(masks.shape)}, got {tuple(disparity.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}")
    t = frames.shape[0]
    if t < 3:
        return masks.clone()
    if flow_forward is None:
        flow_forward = dis_flow(frames[:-1], frames[1:])
    if flow_backward is None:
        flow_backward = dis_flow(frames[1:], frames[:-1])

    disp = disparity.float().masked_fill(masks, -math.inf)
    finite = disp[torch.isfinite(disp)]
    span = float(finite.max() - finite.min()) if finite.numel() else 0.0
    reach = max(1, min(max_reach, math.ceil(span)))
    mid = disp[1:-1]

    def carried(neighbour_masks: torch.Tensor, to_neighbour: torch.Tensor, from_neighbour: torch.Tensor):
        ok = forward_backward_consistent(to_neighbour, from_neighbour).float()
        flow, ok = occluder_flow(to_neighbour, mid, reach, extra=ok)
        return (flow_warp(neighbour_masks.float(), flow, mode="nearest") > 0.5) & (ok > 0.5)

    # frame t looks at t-1 with flow t->t-1 (= backward[t-1]) and at t+1 with forward[t]
    from_prev = carried(masks[:-2], flow_backward[:-1], flow_forward[:-1])
    from_next = carried(masks[2:], flow_forward[1:], flow_backward[1:])
    refined = masks.clone()
    refined[1:-1] |= from_prev & from_next
    return refined
