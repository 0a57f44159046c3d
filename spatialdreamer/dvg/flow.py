"""Dense optical flow and flow-based warping shared by mask refinement and metrics."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from kornia.geometry import create_meshgrid
from kornia.geometry.transform import remap

__all__ = ["dis_flow", "flow_warp", "forward_backward_consistent"]


def _to_gray_u8(frame: torch.Tensor) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[0] not in (1, 3):
        raise ValueError(f"frame must be [C,H,W] with C in (1, 3), got {tuple(frame.shape)}")
    x = frame.detach().float().clamp(0, 1).cpu()
    gray = x[0] if x.shape[0] == 1 else 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    return (gray.numpy() * 255.0 + 0.5).astype(np.uint8)


def dis_flow(
    source: torch.Tensor, target: torch.Tensor, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> torch.Tensor:
    """Flow ``[B,2,H,W]`` (x, y in pixels) such that ``source(p) ~ target(p + flow(p))``.

    OpenCV's DIS flow on the CPU; inputs ``[B,C,H,W]`` in [0, 1] on any device.
    """
    if source.shape != target.shape or source.ndim != 4:
        raise ValueError(
            f"source and target must both be [B,C,H,W], got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    dis = cv2.DISOpticalFlow_create(preset)
    flows = [
        torch.from_numpy(dis.calc(_to_gray_u8(a), _to_gray_u8(b), None)).permute(2, 0, 1)
        for a, b in zip(source, target, strict=True)
    ]
    return torch.stack(flows).to(source.device)


def flow_warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` at ``p + flow(p)``: brings a neighbour frame onto the current one.

    ``image`` ``[B,C,H,W]``, ``flow`` ``[B,2,H,W]``; out-of-frame samples are zero.
    """
    if (
        flow.ndim != 4
        or flow.shape[1] != 2
        or flow.shape[0] != image.shape[0]
        or flow.shape[2:] != image.shape[2:]
    ):
        raise ValueError(
            f"flow must be [B,2,H,W] matching image {tuple(image.shape)}, got {tuple(flow.shape)}"
        )
    b, _, h, w = image.shape
    grid = create_meshgrid(h, w, normalized_coordinates=False, device=image.device, dtype=flow.dtype)
    map_x = grid[..., 0] + flow[:, 0]
    map_y = grid[..., 1] + flow[:, 1]
    return remap(image.to(flow.dtype), map_x, map_y, mode=mode, padding_mode="zeros", align_corners=True)


def forward_backward_consistent(
    forward: torch.Tensor, backward: torch.Tensor, alpha: float = 0.01, beta: float = 0.5
) -> torch.Tensor:
    """Pixels whose forward flow is undone by the backward flow (Sundaram et al. 2010).

    ``forward`` t→s and ``backward`` s→t, both ``[B,2,H,W]``; returns ``[B,1,H,W]`` bool,
    False at occlusions, unreliable flow and where ``p + forward(p)`` leaves the frame.
    """
    back_at = flow_warp(backward, forward)
    diff = (forward + back_at).pow(2).sum(1, keepdim=True)
    mag = forward.pow(2).sum(1, keepdim=True) + back_at.pow(2).sum(1, keepdim=True)
    ok = diff < alpha * mag + beta
    _, _, h, w = forward.shape
    grid = create_meshgrid(h, w, normalized_coordinates=False, device=forward.device, dtype=forward.dtype)
    x = grid[..., 0] + forward[:, 0]
    y = grid[..., 1] + forward[:, 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return ok & inside.unsqueeze(1)
