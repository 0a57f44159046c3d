"""One clip's DVG sample: disparity → right view → warp-back pair → refined masks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spatialdreamer.dvg.flow import dis_flow, view_flow
from spatialdreamer.dvg.masks import refine_masks_temporally
from spatialdreamer.dvg.warpback import warp_back_pair

__all__ = ["DVGSample", "make_dvg_sample"]

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DVGSample:
    """All ``[T,*,H,W]``. ``back``/``back_holes`` and ``target`` are the training triple;
    ``right``/``right_holes`` the other eye; masks True = hole (after temporal refinement).
    ``motion`` is the mean optical-flow magnitude in pixels per frame."""

    right: torch.Tensor
    right_holes: torch.Tensor
    back: torch.Tensor
    back_holes: torch.Tensor
    target: torch.Tensor
    disparity: torch.Tensor
    motion: float


def make_dvg_sample(
    frames: torch.Tensor,
    disparity: torch.Tensor,
    refine_masks: bool = True,
    *,
    flow_forward: torch.Tensor | None = None,
    flow_backward: torch.Tensor | None = None,
    flow_fn: FlowFn | None = None,
) -> DVGSample:
    """Build the DVG views of a clip (one shot, frames in order).

    Optical flow is estimated once per pair of source frames (or given) and reused: the
    source-view masks use it directly, and the other eye's masks use it carried into that
    view by :func:`~spatialdreamer.dvg.flow.view_flow` (geometry, not a second estimate).

    Args:
        frames: ``[T,3,H,W]`` float in [0, 1].
        disparity: ``[T,1,H,W]`` pixels, larger = nearer (left source → right eye).
        refine_masks: make the masks consistent over t-1, t, t+1 (needs ``T >= 3``).
        flow_forward: ``[T-1,2,H,W]`` flow t→t+1 of ``frames`` (e.g. from a CPU stage).
        flow_backward: ``[T-1,2,H,W]`` flow t+1→t; both or neither.
        flow_fn: ``(source, target) -> flow`` used when the flows are not given (None: DIS on
            the CPU; :class:`~spatialdreamer.metrics.raft.RAFTFlow` on a GPU).
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or disparity.shape != (frames.shape[0], 1, *frames.shape[2:]):
        raise ValueError(
            f"frames must be [T,3,H,W] and disparity [T,1,H,W] of the same size, "
            f"got {tuple(frames.shape)} and {tuple(disparity.shape)}"
        )
    if (flow_forward is None) != (flow_backward is None):
        raise ValueError("give both flow_forward and flow_backward, or neither")
    t = frames.shape[0]
    if flow_forward is not None:
        want = (max(0, t - 1), 2, *frames.shape[2:])
        if tuple(flow_forward.shape) != want or tuple(flow_backward.shape) != want:
            raise ValueError(
                f"flows must be [T-1,2,H,W] = {want}, got {tuple(flow_forward.shape)} "
                f"and {tuple(flow_backward.shape)}"
            )
    pair = warp_back_pair(frames, disparity)
    right_holes, back_holes = pair.warped_holes, pair.back_holes
    motion = 0.0
    if t >= 2:
        if flow_forward is None:
            both = (flow_fn or dis_flow)(
                torch.cat([frames[:-1], frames[1:]]), torch.cat([frames[1:], frames[:-1]])
            )
            flow_forward, flow_backward = both[: t - 1], both[t - 1 :]
        flow_forward = flow_forward.to(frames.device, torch.float32)
        flow_backward = flow_backward.to(frames.device, torch.float32)
        motion = float(torch.hypot(flow_forward[:, 0], flow_forward[:, 1]).mean())
        if refine_masks and t >= 3:
            back_holes = refine_masks_temporally(
                frames, back_holes, disparity, flow_forward=flow_forward, flow_backward=flow_backward
            )
            right_forward, _ = view_flow(flow_forward, disparity[:-1], disparity[1:])
            right_backward, _ = view_flow(flow_backward, disparity[1:], disparity[:-1])
            right_holes = refine_masks_temporally(
                pair.warped,
                right_holes,
                pair.warped_disparity,
                flow_forward=right_forward,
                flow_backward=right_backward,
            )
    right = pair.warped.masked_fill(right_holes, 0.0)
    back = pair.back.masked_fill(back_holes, 0.0)
    return DVGSample(right, right_holes, back, back_holes, frames, disparity, motion)
