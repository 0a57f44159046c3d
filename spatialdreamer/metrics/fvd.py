"""Fréchet Video Distance: the Fréchet distance between Gaussians fitted to video features.

The feature extractor is pluggable: any callable mapping a batch of videos ``[N,T,3,H,W]`` in
[0, 1] to features ``[N,D]``. The standard one is I3D (Kinetics-400); :class:`I3DFeatures`
loads an I3D TorchScript from a local path (e.g. StyleGAN-V's ``i3d_torchscript.pt``, the
model behind most published FVD numbers). Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from spatialdreamer.metrics._checks import as_video

__all__ = ["FVDModelError", "I3DFeatures", "feature_statistics", "frechet_distance", "fvd", "video_features"]

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


class FVDModelError(FileNotFoundError):
    """No I3D model to extract features with; the message says what to pass."""


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D,D]`` (unbiased) of features ``[N,D]``, N >= 2."""
    f = (
        features.detach().cpu().double().numpy()
        if isinstance(features, torch.Tensor)
        else np.asarray(features, np.float64)
    )
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N,D] with N >= 2 videos, got shape {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians.

    A singular product (fewer videos than feature dimensions) gets ``eps`` added to the
    diagonals, as in the reference FID/FVD code; the tiny imaginary part of the matrix square
    root from round-off is dropped.

    Example:
        >>> m, s = np.zeros(2), np.eye(2)
        >>> round(frechet_distance(m, s, m + 1, s), 6)
        2.0
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"need mu [D] and sigma [D,D] of one D, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


class I3DFeatures:
    """I3D features ``[N,400]`` (logits layer inputs) of videos ``[N,T,3,H,W]`` in [0, 1].

    Loads a TorchScript I3D (StyleGAN-V's ``i3d_torchscript.pt`` signature:
    ``model(x[N,3,T,224,224] in [-1,1], rescale=False, resize=False, return_features=True)``;
    a module taking only ``x`` works too). Frames are resized to 224x224 here.
    """

    def __init__(self, path: str | os.PathLike | None, device: str | torch.device = "cpu") -> None:
        if path is None or not Path(path).expanduser().is_file():
            where = f" (not found: {path})" if path is not None else ""
            raise FVDModelError(
                f"FVD needs an I3D TorchScript: pass i3d=PATH to i3d_torchscript.pt (StyleGAN-V's){where}"
            )
        self.device = torch.device(device)
        self.model = torch.jit.load(str(Path(path).expanduser()), map_location=self.device).eval()

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be [N,T,3,H,W] in [0, 1], got {tuple(videos.shape)}")
        n, t = videos.shape[:2]
        x = F.interpolate(videos.flatten(0, 1).float(), size=(224, 224), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).view(n, t, 3, 224, 224).permute(0, 2, 1, 3, 4).to(self.device)
        with torch.no_grad():
            try:
                out = self.model(x, rescale=False, resize=False, return_features=True)
            except RuntimeError:  # a TorchScript module without those keyword arguments
                out = self.model(x)
        return out.reshape(n, -1).float().cpu()


def video_features(
    videos: Sequence[torch.Tensor] | torch.Tensor,
    extractor: FeatureExtractor,
    masks: Sequence[torch.Tensor | None] | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Features ``[N,D]`` of ``N`` videos ``[T,3,H,W]`` in [0, 1] (all the same shape).

    With ``masks`` (``[T,1,H,W]`` bool per video), pixels outside the mask are set to 0 before
    extraction, so that two sets differ only inside the masked region.
    """
    videos = list(videos)
    if not videos:
        raise ValueError("need at least one video")
    clips = []
    for i, v in enumerate(videos):
        v = as_video(v, f"videos[{i}]")
        if v.shape != as_video(videos[0]).shape:
            raise ValueError(
                f"all videos must share one shape [T,3,H,W], got {tuple(v.shape)} vs {tuple(videos[0].shape)}"
            )
        m = masks[i] if masks is not None else None
        if m is not None:
            if m.shape != (v.shape[0], 1, *v.shape[2:]):
                raise ValueError(
                    f"masks[{i}] must be [T,1,H,W] matching {tuple(v.shape)}, got {tuple(m.shape)}"
                )
            v = v * m.to(v.device).float()
        clips.append(v)
    feats = [extractor(torch.stack(clips[s : s + batch_size])) for s in range(0, len(clips), batch_size)]
    return torch.cat(feats).float()


def fvd(
    pred: Sequence[torch.Tensor] | torch.Tensor,
    target: Sequence[torch.Tensor] | torch.Tensor,
    extractor: FeatureExtractor | None = None,
    masks: Sequence[torch.Tensor | None] | None = None,
    *,
    i3d: str | os.PathLike | None = None,
) -> float:
    """FVD between two sets of videos (each ``[N,T,3,H,W]`` or a list of ``[T,3,H,W]``), N >= 2.

    Args:
        extractor: videos ``[N,T,3,H,W]`` → features ``[N,D]``; ``None`` → :class:`I3DFeatures`
            loaded from ``i3d`` (a clear error when it is missing).
        masks: optional ``[T,1,H,W]`` per video pair, applied to both sets (see
            :func:`video_features`).
    """
    if extractor is None:
        extractor = I3DFeatures(i3d)
    fp = video_features(pred, extractor, masks)
    ft = video_features(target, extractor, masks)
    return frechet_distance(*feature_statistics(fp), *feature_statistics(ft))
