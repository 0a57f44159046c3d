"""Right-view synthesis baselines scored in one harness.

Every baseline maps the left video ``[T,3,H,W]`` in [0, 1] and the left-view disparity
``[T,1,H,W]`` (pixels, ground truth on the benchmark) to a right video ``[T,3,H,W]``:

* ``identity``: copies the left view. PSNR rewards doing nothing (Mono2Stereo's copy scores
  34.76 dB on their set), so it is always reported beside the others.
* ``naive_dibr``: each pixel shifted by its rounded disparity, written in plain scan order (no
  z-buffer, no sub-pixel splat, no layered holes), then OpenCV Telea inpainting of every hole
  without regard to which side is background. For a horizontal left→right shift, scan order
  happens to let the nearer pixel win on exact disparities, so what it measures is rounding,
  cracks and foreground-blind inpainting.
* ``dvg_fill``: DVG's z-ordered sub-pixel forward warp plus the classical background-side
  fill (:func:`spatialdreamer.stereo.fill_holes`). With ground-truth disparity it is an oracle
  for rendering; with a depth estimator (:class:`DepthDVG`) it is what ``convert`` does.
* ``dvg_fill_depth``: the same on disparity from a depth estimator (``parallax`` needs no
  weights), aligned to the truth by one scale and shift per video.
* ``dvg_refiner``: DVG + RefinerNet (:class:`RefinerDVG`) when a trained pipeline is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
from spatialdreamer.dvg import forward_warp
from spatialdreamer.models.reference import rendered_view
from spatialdreamer.stereo import fill_holes

__all__ = [
    "BASELINES",
    "LABELS",
    "DVGFill",
    "DepthDVG",
    "Identity",
    "NaiveDIBR",
    "RefinerDVG",
    "align_to",
    "build_baselines",
    "check_inputs",
]


def check_inputs(left: torch.Tensor, disparity: torch.Tensor) -> None:
    """``left`` ``[T,3,H,W]`` float and ``disparity`` ``[T,1,H,W]`` float of the same T, H, W."""
    if left.ndim != 4 or left.shape[1] != 3 or not left.is_floating_point():
        raise ValueError(f"left must be a float [T,3,H,W] in [0, 1], got {left.dtype} {tuple(left.shape)}")
    t, _, h, w = left.shape
    if disparity.shape != (t, 1, h, w):
        raise ValueError(f"disparity must be [T,1,H,W] = {(t, 1, h, w)}, got {tuple(disparity.shape)}")


class Identity:
    """Copy the left view (the do-nothing reference)."""

    name = "identity (copy left view)"
    key = "identity"

    def __call__(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        check_inputs(left, disparity)
        return left.clone()


class NaiveDIBR:
    """Rounded per-pixel shift in scan order, then OpenCV inpainting of all holes."""

    name = "naive DIBR + OpenCV inpaint (GT disparity)"
    key = "naive_dibr"

    def __init__(self, inpaint_radius: int = 3) -> None:
        self.inpaint_radius = inpaint_radius

    def __call__(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        check_inputs(left, disparity)
        t, _, h, w = left.shape
        ys, xs = np.mgrid[0:h, 0:w]
        out = torch.empty_like(left)
        for i in range(t):
            src = left[i].permute(1, 2, 0).float().cpu().numpy()
            tx = xs - np.rint(disparity[i, 0].float().cpu().numpy()).astype(np.int64)
            ok = (tx >= 0) & (tx < w)
            dst = np.zeros_like(src)
            hit = np.zeros((h, w), dtype=bool)
            dst[ys[ok], tx[ok]] = src[ok]  # row-major; a later write overwrites an earlier one
            hit[ys[ok], tx[ok]] = True
            u8 = (np.clip(dst, 0, 1) * 255 + 0.5).astype(np.uint8)
            painted = cv2.inpaint(u8, (~hit).astype(np.uint8), self.inpaint_radius, cv2.INPAINT_TELEA)
            dst[~hit] = painted[~hit].astype(np.float32) / 255.0
            out[i] = torch.from_numpy(dst).permute(2, 0, 1).to(left)
        return out


class DVGFill:
    """DVG forward warp with the given disparity, holes filled from the background side."""

    name = "DVG + classical fill (GT disparity)"
    key = "dvg_fill"

    def __call__(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        check_inputs(left, disparity)
        warp = forward_warp(left, disparity.to(left))
        return fill_holes(warp.image.clamp(0, 1), warp.holes, warp.disparity)


def align_to(normalized: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Least-squares ``a * normalized + b`` ≈ ``disparity`` over the whole video (2 numbers).

    Relative depth has no scale: this picks the depth budget and convergence that best match
    the true stereo rig, per video (not per frame), so the score measures depth *shape* and
    temporal stability rather than an arbitrary budget choice.
    """
    x = normalized.detach().flatten().double()
    design = torch.stack([x, torch.ones_like(x)], 1)
    coef = torch.linalg.lstsq(design, disparity.detach().flatten().double().unsqueeze(1).cpu()).solution
    return (normalized.double() * coef[0, 0] + coef[1, 0]).to(normalized.dtype)


class DepthDVG:
    """DVG + classical fill on disparity from a depth estimator (shot-normalised, then aligned
    to the true disparity with one scale and shift per video, see :func:`align_to`)."""

    key = "dvg_fill_depth"

    def __init__(self, depth_model: str | os.PathLike = "parallax", device: str = "cpu") -> None:
        self.estimator = load_depth_estimator(depth_model, device=device)
        self.depth_model = str(depth_model)
        self.name = f"DVG + classical fill ({self.depth_model} depth, aligned)"

    def __call__(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        check_inputs(left, disparity)
        if hasattr(self.estimator, "reset"):
            self.estimator.reset()
        inverse = self.estimator(left).float().cpu()
        normalized = TemporalNormalizer()(inverse)
        predicted = align_to(normalized, disparity.float().cpu())
        return DVGFill()(left, predicted.to(left))


class RefinerDVG:
    """DVG warp with the given disparity, holes generated by a SpatialDreamer pipeline."""

    key = "dvg_refiner"

    def __init__(
        self,
        pipeline: str | os.PathLike | object,
        *,
        num_inference_steps: int = 25,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        from spatialdreamer.models import SpatialDreamerPipeline

        if isinstance(pipeline, str | os.PathLike):
            path = os.path.expanduser(os.fspath(pipeline))
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                raise FileNotFoundError(
                    f"no trained pipeline at {path}: pass a folder written by "
                    "SpatialDreamerPipeline.save_pretrained"
                )
            pipeline = SpatialDreamerPipeline.from_pretrained(path)
        self.pipe = pipeline.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = num_inference_steps
        self.seed = seed
        self.name = "DVG + RefinerNet (GT disparity)"

    def __call__(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        check_inputs(left, disparity)
        warp = forward_warp(left, disparity.to(left))
        out = self.pipe(
            rendered_view(warp.image.clamp(0, 1), warp.holes, warp.disparity),
            warp.holes,
            left,
            num_inference_steps=self.steps,
            generator=torch.Generator().manual_seed(self.seed),
        ).frames
        return out.to(left.device, left.dtype).clamp(0, 1)


# every method the harness knows, in table order; ``dvg_refiner`` needs a trained pipeline
BASELINES = ("identity", "naive_dibr", "dvg_fill", "dvg_fill_depth", "dvg_refiner")
LABELS = {
    "identity": "Copy left view (identity)",
    "naive_dibr": "Naive DIBR + OpenCV inpaint",
    "dvg_fill": "DVG + classical fill",
    "dvg_fill_depth": "DVG + classical fill, estimated depth",
    "dvg_refiner": "DVG + RefinerNet",
}


def build_baselines(
    methods: Sequence[str],
    *,
    pipeline: str | os.PathLike | object | None = None,
    depth_model: str | os.PathLike = "parallax",
    refiner_steps: int = 25,
    device: str = "cpu",
) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The named baselines, built once (models loaded here): ``{key: baseline}`` in order."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(BASELINES)}")
    if "dvg_refiner" in methods and pipeline is None:
        raise ValueError(
            "dvg_refiner needs a trained pipeline: pass --pipeline PATH (a save_pretrained folder)"
        )
    out: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for key in methods:
        if key == "identity":
            out[key] = Identity()
        elif key == "naive_dibr":
            out[key] = NaiveDIBR()
        elif key == "dvg_fill":
            out[key] = DVGFill()
        elif key == "dvg_fill_depth":
            out[key] = DepthDVG(depth_model, device=device)
        else:
            out[key] = RefinerDVG(pipeline, num_inference_steps=refiner_steps, device=device)
    return out
