"""Fréchet Video Distance: the Fréchet distance between Gaussians fitted to video features.

The feature extractor is pluggable: any callable mapping a batch of videos ``[N,T,3,H,W]`` in
[0, 1] to features ``[N,D]``. The standard one is I3D (Kinetics-400): :class:`I3DFeatures`
runs our :class:`~spatialdreamer.metrics.i3d.InceptionI3d` with weights from a local state
dict, or a trusted TorchScript I3D (StyleGAN-V's ``i3d_torchscript.pt``, the model behind
most published FVD numbers; other I3D weights give numbers comparable only among
themselves). Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spatialdreamer.metrics._checks import as_video
from spatialdreamer.metrics._weights import read_state_dict
from spatialdreamer.metrics.i3d import InceptionI3d

__all__ = [
    "FVDModelError",
    "I3DFeatures",
    "feature_statistics",
    "frechet_distance",
    "fvd",
    "load_i3d",
    "video_features",
]

log = logging.getLogger(__name__)

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


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr((S1 S2)^½)`` for covariances: the eigenvalues of ``S1^½ S2 S1^½`` (symmetric PSD),
    stable when the covariances are singular (fewer videos than feature dimensions)."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = half @ s2 @ half
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians.

    The trace of the matrix square root is taken through a symmetric eigendecomposition
    rather than ``scipy.linalg.sqrtm`` (the reference FID/FVD code), which needs an ``eps``
    hack for singular covariances; on well-conditioned inputs the two agree to round-off.

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
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_i3d(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An I3D from a local file: a state dict of :class:`InceptionI3d` (``.safetensors``, or a
    ``.pt`` read with ``weights_only=True``), or a TorchScript archive (StyleGAN-V's
    ``i3d_torchscript.pt``; TorchScript runs the file's own graph, so use files you trust)."""
    hint = (
        "FVD needs I3D weights: pass i3d=PATH (CLI --i3d) to an InceptionI3d state dict "
        "(e.g. pytorch-i3d's rgb_imagenet.pt, or .safetensors) or StyleGAN-V's i3d_torchscript.pt"
    )
    if path is None:
        raise FVDModelError(hint)
    file = Path(path).expanduser()
    if not file.is_file():
        raise FVDModelError(f"{hint} (not found: {file})")
    if _is_torchscript(file):
        log.info("loading TorchScript I3D from %s", file)
        with warnings.catch_warnings():  # deprecated in torch 2.13, still the format of the reference I3D
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(file), map_location=device).eval()
    state = read_state_dict(file, FVDModelError, "I3D state dict")
    if "logits.conv3d.weight" not in state:
        raise FVDModelError(f"{file}: not an InceptionI3d state dict (no logits.conv3d.weight)")
    model = InceptionI3d(num_classes=state["logits.conv3d.weight"].shape[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FVDModelError(f"{file}: keys do not match InceptionI3d ({first})") from exc
    return model.to(device).eval()


class I3DFeatures:
    """I3D features ``[N,D]`` (class logits, D = 400 for Kinetics) of videos ``[N,T,3,H,W]`` in [0, 1].

    Frames are resized to ``size`` x ``size`` (bilinear, no crop) and scaled to [-1, 1], the
    preprocessing of the reference FVD code. A TorchScript model with StyleGAN-V's signature
    is called with ``rescale=False, resize=False, return_features=True``.

    Args:
        path: weights file (see :func:`load_i3d`); a missing one is a :class:`FVDModelError`.
        model: an already built module instead of ``path`` (tests, custom networks).
        size: input side; 224 is the standard, smaller only for tests.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        model: torch.nn.Module | None = None,
        size: int = 224,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else load_i3d(path, self.device)
        self.size = size
        forward = getattr(self.model, "forward", None)
        schema = getattr(forward, "schema", None)
        names = {a.name for a in schema.arguments} if schema is not None else set()
        self._stylegan_v = {"rescale", "resize", "return_features"} <= names

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be [N,T,3,H,W] in [0, 1], got {tuple(videos.shape)}")
        n, t = videos.shape[:2]
        s = self.size
        x = F.interpolate(videos.flatten(0, 1).float(), size=(s, s), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).view(n, t, 3, s, s).permute(0, 2, 1, 3, 4).to(self.device)
        with torch.no_grad():
            if self._stylegan_v:
                out = self.model(x, rescale=False, resize=False, return_features=True)
            else:
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
    if masks is not None and len(masks) != len(videos):
        raise ValueError(f"got {len(masks)} masks for {len(videos)} videos")
    clips = []
    for i, v in enumerate(videos):
        v = as_video(v, f"videos[{i}]")
        if v.shape[1] != 3 or (clips and v.shape != clips[0].shape):
            first = tuple(clips[0].shape) if clips else "[T,3,H,W]"
            raise ValueError(f"all videos must be [T,3,H,W] of one shape, got {tuple(v.shape)} vs {first}")
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
