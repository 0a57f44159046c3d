"""Temporal warping error E_warp (Lai et al. 2018), the paper's flicker measure.

``E_warp = mean_t [ sum_p M_t(p) |V_t(p) - W(V_{t+1})(p)|² / sum_p M_t(p) ]`` where ``W``
warps frame t+1 onto frame t by optical flow, ``|·|²`` is the squared L2 norm over the RGB
channels, and ``M_t`` keeps pixels whose flow passes a forward-backward consistency check
(non-occluded), intersected with an optional mask. Flow defaults to OpenCV DIS on the scored
video itself, or on a ``reference`` video (e.g. the ground truth) when given; exact flows can
be passed in, and any flow network plugs in as ``flow_fn``. RAFT (:mod:`spatialdreamer.metrics.raft`)
is used when you give its weights (``raft_weights=PATH`` or ``flow_fn=RAFTFlow(PATH)``); the
port follows the official checkpoint layout but has not been checked against reference flows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch

from spatialdreamer.dvg import dis_flow, flow_warp, forward_backward_consistent
from spatialdreamer.metrics._checks import as_video, masked_nanmean
from spatialdreamer.metrics.raft import RAFTFlow

__all__ = ["e_warp"]

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def e_warp(
    video: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reference: torch.Tensor | None = None,
    flow: torch.Tensor | None = None,
    backward_flow: torch.Tensor | None = None,
    flow_fn: FlowFn = dis_flow,
    raft_weights: str | os.PathLike | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> float | torch.Tensor:
    """Temporal warping error of ``video`` ``[T,C,H,W]`` in [0, 1] (T >= 2; lower is steadier).

    Args:
        mask: optional ``[T,1,H,W]`` bool; pixel p of pair (t, t+1) counts where ``mask[t]``.
        reference: ``[T,C',H,W]`` video to compute flow on (default: ``video``).
        flow: ``[T-1,2,H,W]`` flow t → t+1 with ``frame_t(p) ≈ frame_{t+1}(p + flow(p))``.
        backward_flow: ``[T-1,2,H,W]`` flow t+1 → t (required with ``flow``).
        flow_fn: ``(source [B,C,H,W], target) → [B,2,H,W]``; OpenCV DIS by default.
        raft_weights: a RAFT checkpoint (``raft-things.pth`` ...): flow by RAFT on the CPU
            instead of ``flow_fn`` (for a GPU or other settings pass ``flow_fn=RAFTFlow(...)``).
        reduction: ``"none"`` → ``[T-1]`` per pair (NaN where nothing is left to score).

    Example:
        >>> v = torch.rand(1, 3, 24, 24).repeat(3, 1, 1, 1)
        >>> e_warp(v) < 1e-8
        True
    """
    video = as_video(video, "video")
    t, _, h, w = video.shape
    if t < 2:
        raise ValueError(f"E_warp needs at least 2 frames, got video of shape {tuple(video.shape)}")
    if mask is not None:
        if mask.ndim != 4 or mask.shape != (t, 1, h, w):
            raise ValueError(f"mask must be [T,1,H,W] = {(t, 1, h, w)}, got {tuple(mask.shape)}")
        mask = mask.to(video.device).bool()
    if raft_weights is not None:
        if flow_fn is not dis_flow:
            raise ValueError("pass raft_weights or flow_fn, not both")
        flow_fn = RAFTFlow(raft_weights)
    if (flow is None) != (backward_flow is None):
        raise ValueError("pass both flow and backward_flow, or neither")
    if flow is None:
        ref = video if reference is None else as_video(reference, "reference")
        if ref.shape[0] != t or ref.shape[2:] != (h, w):
            raise ValueError(f"reference must be [T,C,H,W] with T,H,W = {(t, h, w)}, got {tuple(ref.shape)}")
        flow = flow_fn(ref[:-1], ref[1:]).to(video.device, torch.float32)
        backward_flow = flow_fn(ref[1:], ref[:-1]).to(video.device, torch.float32)
    for name, f in (("flow", flow), ("backward_flow", backward_flow)):
        if f.shape != (t - 1, 2, h, w):
            raise ValueError(f"{name} must be [T-1,2,H,W] = {(t - 1, 2, h, w)}, got {tuple(f.shape)}")
    flow, backward_flow = flow.float(), backward_flow.float()
    warped = flow_warp(video[1:], flow)
    valid = forward_backward_consistent(flow, backward_flow)
    if mask is not None:
        valid = valid & mask[:-1]
    err = (video[:-1] - warped).double().pow(2).sum(1, keepdim=True)
    count = valid.flatten(1).sum(1)
    values = torch.where(
        count > 0, (err * valid).flatten(1).sum(1) / count.clamp(min=1), float("nan")
    ).float()
    return values if reduction == "none" else masked_nanmean(values)
