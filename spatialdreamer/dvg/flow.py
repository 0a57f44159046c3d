"""Dense optical flow and flow-based warping shared by mask refinement and metrics."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from kornia.geometry import create_meshgrid
from kornia.geometry.transform import remap

from spatialdreamer.dvg.dis import dis_pair_flows

__all__ = [
    "dis_flow",
    "dis_pair_flows",
    "flow_warp",
    "forward_backward_consistent",
    "upscale_flow",
    "view_flow",
]


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


def upscale_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a ``[B,2,h,w]`` flow field to ``height x width``, scaling its vectors with it."""
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be [B,2,h,w], got {tuple(flow.shape)}")
    h, w = flow.shape[-2:]
    if (h, w) == (height, width):
        return flow
    out = torch.nn.functional.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    return out * torch.tensor([width / w, height / h], device=flow.device, dtype=out.dtype).view(1, 2, 1, 1)


def view_flow(
    flow: torch.Tensor, disparity: torch.Tensor, disparity_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry a source-view flow into the warped (other-eye) view, without estimating it again.

    A source pixel ``p`` of frame t lands at ``p - d_t(p)`` in the other eye; its match in
    frame t+1 is ``q = p + flow(p)``, which lands at ``q - d_t+1(q)``. So the other eye's flow
    at ``p - d_t(p)`` is ``flow(p)`` with its x component corrected by ``d_t(p) - d_t+1(q)``,
    splatted there with :func:`spatialdreamer.dvg.forward_warp` (nearest pixel wins). Pure
    torch: runs where the tensors are.

    Args:
        flow: ``[B,2,H,W]`` flow t→t+1 of the source view.
        disparity: ``[B,1,H,W]`` source disparity of frame t (pixels, larger = nearer).
        disparity_next: ``[B,1,H,W]`` source disparity of frame t+1.

    Returns:
        ``(flow, holes)``: the other eye's flow ``[B,2,H,W]`` (zero in holes) and its holes
        ``[B,1,H,W]`` bool (no source pixel lands there).
    """
    from spatialdreamer.dvg.warp import forward_warp

    if disparity.shape != disparity_next.shape or flow.shape[0] != disparity.shape[0]:
        raise ValueError(
            f"flow [B,2,H,W] and both disparities [B,1,H,W] must match, got {tuple(flow.shape)}, "
            f"{tuple(disparity.shape)} and {tuple(disparity_next.shape)}"
        )
    if flow.shape[2:] != disparity.shape[2:] or flow.shape[1] != 2:
        raise ValueError(
            f"flow must be [B,2,H,W] matching disparity {tuple(disparity.shape)}, got {tuple(flow.shape)}"
        )
    next_at = flow_warp(disparity_next.to(flow.dtype), flow)
    dx = flow[:, :1] + disparity.to(flow.dtype) - next_at
    carried = torch.cat([dx, flow[:, 1:]], dim=1)
    warped = forward_warp(carried, disparity.to(flow.dtype))
    return warped.image.masked_fill(warped.holes, 0.0), warped.holes


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
