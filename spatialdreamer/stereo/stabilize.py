"""Temporal stabilisation of depth where the picture does not move.

Depth models (and the shot normalisation after them) wobble from frame to frame by a fraction
of a pixel of disparity even where nothing moves; the forward warp turns every such wobble into
a resampled, shifted texture, and the synthesized eye shimmers while the source is still.
:class:`DepthStabilizer` gates a temporal filter by the source itself: where consecutive
frames are equal (up to noise) the depth is pulled only slowly towards the new estimate, where
they differ (a moving object, a pan) the new estimate is taken at once, so moving things never
drag a ghost of their old depth behind them. With stable depth the warp of a static region is
the same every frame, and so are its holes and their fill.

An exponential average alone does not hold a still picture steady: a depth model's error drifts
slowly (a shot's depth range, cues that come and go), and an average passes slow drift through.
So the longer a pixel has been still, the slower it follows: after ``n`` still frames at
``1 / (n + 1)²`` of the rate, down to ``slowest`` of it; any motion at the pixel restarts the
count. On Big Buck Bunny (grass in the wind around still rocks and sky) this cut the
disparity's change on still regions from 0.29 to about 0.02 px per frame
(``benchmarks/stability.py``). The motion mask is widened by only a few pixels: widened by 1 %
of the width, as it was, it marked a third of the still regions among the grass as moving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatialdreamer.dvg.disparity import dilate_foreground

__all__ = ["DepthStabilizer"]


class DepthStabilizer:
    """Difference-gated exponential smoothing of a per-frame depth map over a shot.

    For frame ``t`` with source ``I_t`` and new estimate ``D_t``:
    ``out_t = out_{t-1} + a * (D_t - out_{t-1})``. Where the source changed by more than
    ``threshold`` (grey levels in [0, 1], max over channels, widened by ``radius`` pixels so the
    depth of a moving edge follows it) ``a = 1``, blended linearly down to the still rate
    between ``threshold`` and twice ``threshold``. A pixel still for ``n`` frames (this one
    included) has ``a = (1 - strength) * max(1 / (n + 1)², slowest)``.

    Args:
        strength: sets how much of its previous depth a still pixel keeps per frame (at least
            ``strength``, more the longer it is still), in [0, 1); 0 = off.
        threshold: per-pixel source change that counts as motion (default 6/255, above
            compression noise).
        radius: widening of the motion mask in pixels; default 0.25 % of the width (3 px at
            1280).
        slowest: the least share of the first still frame's rate a long-still pixel keeps, in
            (0, 1]: new estimates still land there, in about ``1 / ((1 - strength) * slowest)``
            frames (5 s at 25 fps with the defaults); 1 = a plain moving average.

    Example:
        >>> stab = DepthStabilizer(strength=0.9)
        >>> frames = torch.rand(1, 3, 8, 8).expand(3, 3, 8, 8)  # a still picture
        >>> depth = torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 8, 8)
        >>> [round(float(v), 2) for v in stab(frames, depth)[:, 0, 0, 0]]
        [0.0, 0.03, 0.04]
    """

    def __init__(
        self,
        strength: float = 0.85,
        threshold: float = 6 / 255,
        radius: int | None = None,
        slowest: float = 0.05,
    ) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing strength must be in [0, 1), got {strength}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if radius is not None and radius < 0:
            raise ValueError(f"radius must be >= 0 pixels, got {radius}")
        if not 0.0 < slowest <= 1.0:
            raise ValueError(f"slowest must be in (0, 1], got {slowest}")
        self.strength = float(strength)
        self.threshold = float(threshold)
        self.radius = radius
        self.slowest = float(slowest)
        self._still: torch.Tensor | None = None  # frames each pixel has been still
        self._frame: torch.Tensor | None = None
        self._depth: torch.Tensor | None = None

    def reset(self) -> None:
        """A cut: the next frame's depth is taken as it is."""
        self._frame = None
        self._depth = None
        self._still = None

    def motion(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """``[B,1,H,W]`` in [0, 1]: how much each pixel counts as moving between two frames."""
        change = (current - previous).abs().amax(1, keepdim=True)
        r = self.radius if self.radius is not None else max(1, round(current.shape[-1] / 400))
        h, w = change.shape[-2:]
        cell = max(1, min(r // 2, 8))  # widen on a grid of cells: the cost stays flat in r
        if cell > 1:
            change = F.max_pool2d(change, cell, ceil_mode=True)
        change = dilate_foreground(change, (-(-r // cell), -(-r // cell)))  # a max filter
        if cell > 1:
            change = F.interpolate(change, scale_factor=cell, mode="nearest")[..., :h, :w]
        return ((change - self.threshold) / self.threshold).clamp_(0.0, 1.0)

    def __call__(self, frames: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Stabilise consecutive frames of one shot.

        Args:
            frames: ``[B,C,H,W]`` float source frames in [0, 1], continuing the previous call.
            depth: ``[B,1,H,W]`` float, any depth-like map (normalised inverse depth here).

        Returns:
            ``[B,1,H,W]`` stabilised depth, same dtype and device as ``depth``.
        """
        if frames.ndim != 4 or depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(
                f"need frames [B,C,H,W] and depth [B,1,H,W], got {tuple(frames.shape)}, {tuple(depth.shape)}"
            )
        if frames.shape[0] != depth.shape[0] or frames.shape[-2:] != depth.shape[-2:]:
            raise ValueError(
                f"frames {tuple(frames.shape)} and depth {tuple(depth.shape)} differ in count or size"
            )
        if self.strength == 0.0:
            return depth
        out = torch.empty_like(depth)
        frames = frames.float()
        for i in range(frames.shape[0]):
            if self._depth is None or self._depth.shape != depth[i].shape:
                self._depth = depth[i].float()
                self._still = torch.zeros_like(self._depth)
            else:
                moving = self.motion(self._frame[None], frames[i : i + 1])[0]
                self._still = torch.where(moving > 0, 0.0, self._still + 1.0)
                still = (1.0 - self.strength) * (self._still + 1.0).pow_(-2).clamp_(min=self.slowest)
                rate = still + (1.0 - still) * moving
                self._depth = self._depth + rate * (depth[i].float() - self._depth)
            self._frame = frames[i].clone()
            out[i] = self._depth
        return out
