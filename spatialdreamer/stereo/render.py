"""From a frame and its disparity to the two eyes a viewer sees.

- **Which eyes.** ``eye="both"`` (the default, as iw3's ``--synthetic-view both``) gives each
  eye half the disparity: the source sits between the eyes, each synthesized eye moves half as
  far, its holes are half as wide and the artefacts are shared by both eyes instead of all in
  one. ``"right"``/``"left"`` synthesize only that eye, with the whole disparity, and show the
  source as the other eye.
- **Edges.** Depth is dilated on its near side first
  (:func:`~spatialdreamer.dvg.disparity.dilate_foreground`) against halos.
- **Screen borders.** The warp exposes a band at the frame edge that no source pixel reaches
  (behind-the-screen content moves inwards); filling it from its row's nearest pixel smears one
  colour across the band. Here the frame is mirrored outwards (source and disparity) before the
  warp, so the band shows the mirrored continuation of the picture, with its own texture and
  depth, and nothing of it is treated as a disocclusion.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from spatialdreamer.choices import EYES
from spatialdreamer.dvg import _warp_kernel, forward_warp
from spatialdreamer.dvg.disparity import dilate_foreground
from spatialdreamer.dvg.warp import WarpResult
from spatialdreamer.stereo import _fill_kernel
from spatialdreamer.stereo.fill import fill_holes, fill_holes_u8

__all__ = ["EYES", "RefinedEye", "StereoRenderer", "warp_with_borders"]


def warp_with_borders(
    image: torch.Tensor, disparity: torch.Tensor, towards: Literal["right", "left"] = "right"
) -> WarpResult:
    """:func:`~spatialdreamer.dvg.forward_warp` of a frame mirrored outwards on both sides by
    the largest disparity, cropped back: the borders the warp exposes are covered by the
    picture's own mirrored continuation instead of being holes (that a fill would smear).

    Args and result as :func:`~spatialdreamer.dvg.forward_warp` (``[B,C,H,W]`` image,
    ``[B,1,H,W]`` disparity in pixels).
    """
    wide_image, wide_disparity, pad = _mirror_borders(image, disparity)
    if pad == 0:
        return forward_warp(image, disparity, towards=towards)
    wide = forward_warp(wide_image, wide_disparity, towards=towards)
    w = image.shape[-1]
    source_x = wide.source_x[..., pad : pad + w]
    source_x = torch.where(source_x >= 0, (source_x - pad).clamp(0, w - 1), source_x)
    return WarpResult(*_crop(wide, pad, w), source_x)


def _mirror_borders(image: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Image and disparity mirrored outwards by the largest disparity (+2 px), and that width."""
    w = image.shape[-1]
    pad = min(w - 1, math.ceil(float(disparity.abs().amax())) + 2) if disparity.numel() else 0
    if pad <= 0:
        return image, disparity, 0
    sides = (pad, pad, 0, 0)
    return F.pad(image, sides, mode="reflect"), F.pad(disparity, sides, mode="reflect"), pad


def _crop(wide: WarpResult, pad: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    crop = slice(pad, pad + w)
    return wide.image[..., crop], wide.holes[..., crop], wide.disparity[..., crop]


class StereoRenderer:
    """Synthesize the eyes of a stereo pair with the classical fill.

    Args:
        eye: ``"both"``, ``"right"`` or ``"left"``: which eyes are synthesized.
        edge_dilation: ``(x, y)`` radius of the near-side dilation of the disparity, pixels.
        inpaint: smooth the hole fill with inpainting (else row-wise propagation only).
        thin_holes: holes at most this many pixels wide along a row (the seams where held
            depth meets fresh depth) are filled from their background-side neighbour instead of
            being inpainted (:func:`~spatialdreamer.stereo.fill.fill_thin_holes`); 0 = inpaint
            all.

    Example:
        >>> render = StereoRenderer(eye="both")
        >>> left, right = render(torch.rand(2, 3, 16, 32), torch.full((2, 1, 16, 32), 2.0))
        >>> left.shape, right.shape
        (torch.Size([2, 3, 16, 32]), torch.Size([2, 3, 16, 32]))
    """

    def __init__(
        self,
        eye: str = "both",
        edge_dilation: tuple[int, int] = (2, 1),
        inpaint: bool = True,
        thin_holes: int = 2,
    ) -> None:
        if eye not in EYES:
            raise ValueError(f"--eye must be one of {', '.join(EYES)}, got {eye!r}")
        if thin_holes < 0:
            raise ValueError(f"thin_holes must be >= 0 pixels, got {thin_holes}")
        self.eye = eye
        self.thin_holes = thin_holes
        self.edge_dilation = edge_dilation
        self.inpaint = inpaint
        self.timings = {"warp": 0.0, "fill": 0.0}

    def shares(self) -> dict[str, float]:
        """Share of the disparity each synthesized eye gets."""
        return {"both": {"left": 0.5, "right": 0.5}, "right": {"right": 1.0}, "left": {"left": 1.0}}[self.eye]

    def __call__(
        self, frames: torch.Tensor, disparity: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(left, right)`` eyes of ``frames`` ``[B,3,H,W]`` in [0, 1] with ``disparity``
        ``[B,1,H,W]`` (pixels between the eyes, positive = in front of the screen); an eye that
        is the source itself comes back as ``None`` (the caller has it, as decoded)."""
        disparity = dilate_foreground(disparity, self.edge_dilation)
        # mirrored once for both eyes; the fill needs no source columns, so none are mapped back
        wide_frames, wide_disparity, pad = _mirror_borders(frames, disparity)
        out: dict[str, torch.Tensor] = {}
        for eye, share in self.shares().items():
            start = time.perf_counter()
            warped = forward_warp(
                wide_frames, wide_disparity * share if share != 1.0 else wide_disparity, towards=eye
            )
            image, holes, warped_disparity = _crop(warped, pad, frames.shape[-1])
            middle = time.perf_counter()
            out[eye] = fill_holes(
                image,
                holes,
                warped_disparity,
                background_side="right" if eye == "right" else "left",
                inpaint=self.inpaint,
                thin=self.thin_holes,
            )
            self.timings["warp"] += middle - start
            self.timings["fill"] += time.perf_counter() - middle
        return out.get("left"), out.get("right")

    def renders_u8(self, frames: torch.Tensor) -> bool:
        """Whether :meth:`render_u8` can render ``frames``: float32 on the CPU, no gradient,
        the compiled kernels available, inpainting on."""
        return (
            self.inpaint
            and frames.device.type == "cpu"
            and frames.dtype == torch.float32
            and frames.ndim == 4
            and frames.shape[1] == 3
            and frames.shape[-1] >= 2
            and not (torch.is_grad_enabled() and frames.requires_grad)
            and _warp_kernel.available()
            and _fill_kernel.available()
        )

    def render_u8(self, frames: torch.Tensor, disparity: torch.Tensor, out: dict[str, np.ndarray]) -> bool:
        """The synthesized eyes of :meth:`__call__` written straight into ``uint8`` frames:
        ``out[eye]`` ``[B,H,W,3]`` (any strides: e.g. one half of a side-by-side frame) for
        each eye of :meth:`shares`, the same pixels as ``__call__``'s float eyes converted with
        ``clamp(0, 1) * 255 + 0.5``. One compiled pass per row warps the frame mirrored outwards
        without making it (no float copy of the eye, no conversion afterwards) and the fill
        works only in windows around the holes (:func:`~spatialdreamer.stereo.fill.fill_holes_u8`).
        Returns False in the rare case the fill cannot (a row without any pixel to fill
        from): the caller renders with ``__call__`` then. Needs :meth:`renders_u8`."""
        if min(self.edge_dilation) < 0:
            raise ValueError(f"edge dilation radius must be >= 0 pixels, got {self.edge_dilation}")
        disparity = _warp_kernel.dilate_cpu(disparity.float(), self.edge_dilation)
        w = frames.shape[-1]
        pad = min(w - 1, math.ceil(float(disparity.abs().amax())) + 2) if disparity.numel() else 0
        pool = _warp_kernel.pool()
        for eye, share in self.shares().items():
            start = time.perf_counter()
            holes, warped_disparity = _warp_kernel.warp_rows_u8_cpu(
                frames, disparity, share, pad, eye == "left", out[eye]
            )
            middle = time.perf_counter()
            ok = fill_holes_u8(
                out[eye],
                holes,
                warped_disparity,
                background_side="right" if eye == "right" else "left",
                thin=self.thin_holes,
                pool=pool,
            )
            self.timings["warp"] += middle - start
            self.timings["fill"] += time.perf_counter() - middle
            if not ok:
                return False
        return True


class RefinedEye:
    """One synthesized eye whose holes a trained pipeline fills, streamed
    (:class:`~spatialdreamer.stereo.refiner.StreamingRefiner`).

    The pipeline is trained on right-eye views of a left source; a left eye is rendered as the
    right eye of the mirrored frame and mirrored back, which is the same problem.
    Synthesizing both eyes would need two refiner passes per frame and is refused upstream.
    """

    def __init__(self, refiner, eye: str = "right", edge_dilation: tuple[int, int] = (2, 1)) -> None:
        if eye not in ("right", "left"):
            raise ValueError(f"a refiner synthesizes one eye, 'right' or 'left'; got {eye!r}")
        self.refiner = refiner
        self.eye = eye
        self.edge_dilation = edge_dilation
        self.timings = {"warp": 0.0, "fill": 0.0}

    def _oriented(self, t: torch.Tensor) -> torch.Tensor:
        return t.flip(-1) if self.eye == "left" else t

    def push(self, frames: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        """The eye's frames that are ready (the refiner holds a few back for blending)."""
        start = time.perf_counter()
        frames = self._oriented(frames)
        disparity = self._oriented(dilate_foreground(disparity, self.edge_dilation))
        warped = warp_with_borders(frames, disparity)
        middle = time.perf_counter()
        ready = self.refiner.push(warped.image, warped.holes, frames, warped.disparity)
        self.timings["warp"] += middle - start
        self.timings["fill"] += time.perf_counter() - middle
        return self._oriented(ready)

    def flush(self) -> torch.Tensor:
        """The frames held back (at a cut and at the end)."""
        return self._oriented(self.refiner.flush())
