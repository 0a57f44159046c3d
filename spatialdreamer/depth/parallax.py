"""``parallax``: a weight-free depth fallback from motion parallax and a scene prior.

It needs no download and runs anywhere OpenCV does, so ``spatialdreamer convert`` still works
offline. It is a *fallback*: it only sees relative motion and the frame layout, not objects.
See :class:`ParallaxDepthEstimator` for the cues and its measured accuracy.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from spatialdreamer.depth.base import DepthEstimator, resolve_device
from spatialdreamer.dvg.flow import dis_flow, flow_warp

__all__ = ["ParallaxDepthEstimator", "camera_motion_residual", "scene_prior"]


def scene_prior(
    height: int,
    width: int,
    vertical: float = 0.75,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The frame-layout prior of most footage: lower in the frame = nearer, centre a bit nearer.

    Returns ``[1,1,H,W]`` float32 in [0, 1]: ``vertical * y + (1 - vertical) * (1 - r^2)``, with
    ``y`` running 0 (top) → 1 (bottom) and ``r`` the distance from the centre, 1 at the corners.

    Example:
        >>> p = scene_prior(4, 6)
        >>> p.shape, bool(p[0, 0, -1, 3] > p[0, 0, 0, 3])
        (torch.Size([1, 1, 4, 6]), True)
    """
    if height < 1 or width < 1:
        raise ValueError(f"prior size must be positive, got {height}x{width}")
    if not 0.0 <= vertical <= 1.0:
        raise ValueError(f"vertical must be in [0, 1], got {vertical}")
    y = torch.linspace(0.0, 1.0, height, device=device).view(height, 1) if height > 1 else torch.zeros(1, 1)
    x = torch.linspace(-1.0, 1.0, width, device=device).view(1, width) if width > 1 else torch.zeros(1, 1)
    r2 = (x**2 + (2 * y.to(device) - 1) ** 2) / 2
    prior = vertical * y.to(device) + (1.0 - vertical) * (1.0 - r2)
    return prior.expand(height, width).reshape(1, 1, height, width).float()


def camera_motion_residual(flow: torch.Tensor, step: int = 4, threshold: float = 1.0) -> torch.Tensor:
    """Magnitude of the flow left after removing the camera's global motion.

    A homography is fitted robustly (RANSAC, ``threshold`` pixels) to the flow sampled every
    ``step`` pixels; it captures pan, tilt, zoom and roll, and the parallax of the dominant
    (usually background) surface. What is left is parallax of surfaces off that surface, nearer
    ones moving more, plus the objects' own motion. Where the fit fails (too few points, a
    degenerate field) the median flow is removed instead.

    Args:
        flow: ``[B,2,H,W]`` float, x then y in pixels (as from :func:`spatialdreamer.dvg.dis_flow`).

    Returns:
        ``[B,1,H,W]`` float32 >= 0 on ``flow``'s device.
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be [B,2,H,W], got {tuple(flow.shape)}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    b, _, h, w = flow.shape
    f = flow.detach().float().cpu().numpy()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((b, 1, h, w), np.float32)
    for i in range(b):
        fx, fy = f[i, 0], f[i, 1]
        src = np.stack([xs[::step, ::step].ravel(), ys[::step, ::step].ravel()], 1)
        dst = src + np.stack([fx[::step, ::step].ravel(), fy[::step, ::step].ravel()], 1)
        homography = None
        if len(src) >= 8:
            homography, _ = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=500, confidence=0.99)
        if homography is not None and np.isfinite(homography).all():
            pts = np.stack([xs, ys, np.ones_like(xs)], 0).reshape(3, -1)
            mapped = homography @ pts
            mapped = mapped[:2] / np.where(np.abs(mapped[2:]) < 1e-9, 1e-9, mapped[2:])
            gx = mapped[0].reshape(h, w) - xs
            gy = mapped[1].reshape(h, w) - ys
        else:
            gx, gy = np.median(fx), np.median(fy)
        out[i, 0] = np.hypot(fx - gx, fy - gy)
    return torch.from_numpy(out).to(flow.device)


class ParallaxDepthEstimator(DepthEstimator):
    """Relative inverse depth from motion parallax and a scene prior, with no model weights.

    Per frame, at a working width of at most ``work_width`` pixels:

    1. Optical flow (OpenCV DIS) to the previous frame (for the first frame after a reset: to the
       next frame in the batch; a single first frame gets the prior alone).
    2. The camera's global motion is removed (:func:`camera_motion_residual`); the residual
       magnitude grows with nearness relative to the dominant, normally farthest surface.
    3. The residual is median-filtered, warped along the flow onto the current frame and blended
       with the previous estimate (``temporal`` = weight of the new observation), so that cues
       persist while objects stop and flicker is damped; its scale is an EMA of the 95th
       percentile (never below ``noise_floor`` pixels, so a static shot does not amplify noise).
    4. ``nearness = prior_weight * scene_prior + tanh(residual / scale)``.

    The output depends on earlier frames: call :meth:`reset` at every cut and new video.

    Accuracy on ``spatialdreamer.synth`` scenes (seeds 0-5, 96x160, 8 frames, frames 1-7 scored,
    CPU; reproduce with :func:`spatialdreamer.depth.evaluate.evaluate_on_synth`), against true
    inverse depth: Spearman rank correlation 0.75 (prior alone: 0.66, constant: 0), AbsRel after
    least-squares scale-and-shift alignment 0.37 (prior alone: 0.45, constant: 0.50); on held-out
    seeds 10-15 with 16 frames: 0.75 and 0.31. The synth background plane gets nearer towards the
    bottom, which flatters the prior; the motion cue is what separates objects from it. A trained
    model does far better on real footage; use this only when no weights can be loaded.
    Known failure modes: objects moving independently look nearer than they are; a static camera
    on a static scene yields the prior alone; a nearer surface filling most of the frame becomes the
    "background" and looks far.

    Args:
        device: where the output is returned (flow runs on the CPU either way).
        work_width: frames wider than this are processed downscaled (speed), output upscaled.
        prior_weight: weight of :func:`scene_prior` next to the motion cue (which is in [0, 1)).
        temporal: weight of the new observation in the temporal blend, in (0, 1].
        noise_floor: smallest residual scale in working pixels.

    Example:
        >>> est = ParallaxDepthEstimator(device="cpu")
        >>> est(torch.rand(3, 3, 48, 64)).shape
        torch.Size([3, 1, 48, 64])
    """

    stateful = True

    def __init__(
        self,
        device: str | torch.device = "auto",
        *,
        work_width: int = 480,
        prior_weight: float = 0.7,
        temporal: float = 0.4,
        noise_floor: float = 0.3,
        flow_preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    ) -> None:
        if work_width < 16:
            raise ValueError(f"work_width must be >= 16, got {work_width}")
        if prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
        if not 0.0 < temporal <= 1.0:
            raise ValueError(f"temporal must be in (0, 1], got {temporal}")
        if noise_floor <= 0:
            raise ValueError(f"noise_floor must be > 0, got {noise_floor}")
        self.name = "parallax"
        self.device = resolve_device(device)
        self.work_width = int(work_width)
        self.prior_weight = float(prior_weight)
        self.temporal = float(temporal)
        self.noise_floor = float(noise_floor)
        self.flow_preset = flow_preset
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame and the accumulated motion cue (call at cuts)."""
        self._prev: torch.Tensor | None = None
        self._motion: torch.Tensor | None = None
        self._scale: float | None = None

    def _work_size(self, h: int, w: int) -> tuple[int, int]:
        if w <= self.work_width:
            return h, w
        return max(8, round(h * self.work_width / w)), self.work_width

    def _estimate(self, frames: torch.Tensor) -> torch.Tensor:
        b, _, h, w = frames.shape
        wh, ww = self._work_size(h, w)
        x = frames.detach().float().cpu().clamp(0.0, 1.0)
        if (wh, ww) != (h, w):
            x = F.interpolate(x, size=(wh, ww), mode="bilinear", align_corners=False, antialias=True)
        if self._prev is not None and self._prev.shape[-2:] != (wh, ww):
            raise ValueError(
                f"frame size changed from {tuple(self._prev.shape[-2:])} (working size) without reset(); "
                "call reset() between videos"
            )
        prior = scene_prior(wh, ww)
        outs = []
        for t in range(b):
            cur = x[t : t + 1]
            motion = self._observe(cur, x[t + 1 : t + 2] if t + 1 < b else None)
            cue = torch.zeros_like(prior) if motion is None else torch.tanh(motion / self._scale)
            outs.append(self.prior_weight * prior + cue)
            self._prev = cur
        out = torch.cat(outs)
        if (wh, ww) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out.to(self.device)

    def _observe(self, cur: torch.Tensor, nxt: torch.Tensor | None) -> torch.Tensor | None:
        """Update and return the smoothed residual motion ``[1,1,h,w]`` for ``cur`` (None: no cue yet)."""
        if self._prev is not None:
            flow = dis_flow(cur, self._prev, self.flow_preset)  # cur(p) ~ prev(p + flow)
        elif nxt is not None:
            flow = dis_flow(cur, nxt, self.flow_preset)
        else:
            return None
        residual = camera_motion_residual(flow)
        residual = torch.from_numpy(cv2.medianBlur(residual[0, 0].numpy(), 5)).view_as(residual)
        if self._motion is not None and self._prev is not None:
            carried = flow_warp(self._motion, flow)
            inside = flow_warp(torch.ones_like(self._motion), flow) > 0.999
            blended = self.temporal * residual + (1.0 - self.temporal) * carried
            residual = torch.where(inside, blended, residual)
        self._motion = residual
        # numpy's selection-based quantile: same linear interpolation as torch.quantile's sort,
        # ~10x faster on the 130k values of a 480-wide working frame
        sample = residual.flatten()[:: max(1, residual.numel() // 65536)].cpu().numpy()
        spread = float(np.quantile(sample, 0.95))
        spread = max(spread, self.noise_floor)
        self._scale = spread if self._scale is None else 0.8 * self._scale + 0.2 * spread
        if not math.isfinite(self._scale):
            self._scale = self.noise_floor
        return residual
