"""One clip's DVG sample: disparity → right view → warp-back pair → refined masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spatialdreamer.dvg.flow import dis_flow
from spatialdreamer.dvg.masks import refine_masks_temporally
from spatialdreamer.dvg.warpback import warp_back_pair

__all__ = ["DVGSample", "make_dvg_sample"]


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


def make_dvg_sample(frames: torch.Tensor, disparity: torch.Tensor, refine_masks: bool = True) -> DVGSample:
    """Build the DVG views of a clip (one shot, frames in order).

    Args:
        frames: ``[T,3,H,W]`` float in [0, 1].
        disparity: ``[T,1,H,W]`` pixels, larger = nearer (left source → right eye).
        refine_masks: make the masks consistent over t-1, t, t+1 (needs ``T >= 3``).
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or disparity.shape != (frames.shape[0], 1, *frames.shape[2:]):
        raise ValueError(
            f"frames must be [T,3,H,W] and disparity [T,1,H,W] of the same size, "
            f"got {tuple(frames.shape)} and {tuple(disparity.shape)}"
        )
    pair = warp_back_pair(frames, disparity)
    right_holes, back_holes = pair.warped_holes, pair.back_holes
    motion = 0.0
    if frames.shape[0] >= 2:
        forward = dis_flow(frames[:-1], frames[1:])
        motion = float(forward.norm(dim=1).mean())
        if refine_masks and frames.shape[0] >= 3:
            backward = dis_flow(frames[1:], frames[:-1])
            back_holes = refine_masks_temporally(
                frames, back_holes, disparity, flow_forward=forward, flow_backward=backward
            )
            right_holes = refine_masks_temporally(pair.warped, right_holes, pair.warped_disparity)
    right = pair.warped.masked_fill(right_holes, 0.0)
    back = pair.back.masked_fill(back_holes, 0.0)
    return DVGSample(right, right_holes, back, back_holes, frames, disparity, motion)
