"""Depth from any Hugging Face ``AutoModelForDepthEstimation`` model, preprocessed on tensors.

The model's image-processor settings (target size, aspect handling, size multiple, mean/std,
resampling) are read from its ``preprocessor_config.json`` when there is one, but applied with
torch ops on whole batches, so frames never leave the GPU. The output polarity comes from the
config: relative models (Depth Anything, DPT/MiDaS, Depth Pro) give inverse depth and are used as
they are; metric models (``depth_estimation_type == "metric"``, ZoeDepth, GLPN, TIPSv2-DPT) give
depth and are inverted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from spatialdreamer.choices import DEFAULT_DEPTH_MODEL
from spatialdreamer.depth.base import DepthEstimator, DepthModelError, resolve_device
from spatialdreamer.dvg.disparity import inverse_depth_from_metric

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "InputSpec",
    "TransformersDepthEstimator",
    "depth_polarity",
    "fit_input_size",
]

log = logging.getLogger(__name__)


Polarity = Literal["inverse", "metric"]

# Model types whose raw ``predicted_depth`` is metric depth (larger = farther) whatever the config says.
_METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "tipsv2_dpt"})
# PIL resampling codes used in preprocessor configs → torch interpolation modes.
_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def depth_polarity(config: object) -> Polarity:
    """Whether a depth model's raw output is ``"inverse"`` depth (larger = nearer) or ``"metric"``.

    ``config.depth_estimation_type`` decides where the architecture has it (Depth Anything);
    otherwise the model type does (ZoeDepth, GLPN, TIPSv2-DPT are metric; DPT/MiDaS, Depth Pro's
    canonical inverse depth and unknown types are taken as inverse). DPT checkpoints fine-tuned
    for metric depth (e.g. the ``dpt-dinov2-*-kitti`` ones) cannot be told apart by config: pass
    ``polarity="metric"`` to :class:`TransformersDepthEstimator` for them.
    """
    kind = getattr(config, "depth_estimation_type", None)
    if kind == "metric":
        return "metric"
    if kind == "relative":
        return "inverse"
    if getattr(config, "model_type", None) in _METRIC_MODEL_TYPES:
        return "metric"
    return "inverse"


def fit_input_size(
    height: int, width: int, target: tuple[int, int], multiple: int, keep_aspect: bool = True
) -> tuple[int, int]:
    """The model input size for a ``height`` x ``width`` frame, as the transformers DPT-family
    image processors compute it.

    With ``keep_aspect`` the frame is scaled by whichever of ``target_h / height`` and
    ``target_w / width`` is closer to 1 (for a 1920x1080 frame and a 518x518 target: 518 rows);
    without it, each side goes to its target. Both sides are then rounded to a multiple of
    ``multiple`` (the patch size), never below one multiple.

    Example:
        >>> fit_input_size(1080, 1920, (518, 518), 14)
        (518, 924)
        >>> fit_input_size(480, 640, (384, 384), 16, keep_aspect=False)
        (384, 384)
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if min(target) < 1 or multiple < 1:
        raise ValueError(f"target {target} and multiple {multiple} must be positive")
    scale_h, scale_w = target[0] / height, target[1] / width
    if keep_aspect:
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h

    def snap(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    return snap(scale_h * height), snap(scale_w * width)


@dataclass(frozen=True)
class InputSpec:
    """How frames become ``pixel_values`` for one model (see :func:`fit_input_size`)."""

    target: tuple[int, int]
    multiple: int
    keep_aspect: bool
    mean: tuple[float, float, float] | None  # None: no normalisation
    std: tuple[float, float, float] | None
    mode: str  # torch interpolation mode

    @classmethod
    def from_configs(cls, config: object, processor: dict | None) -> InputSpec:
        """Combine the model config (patch size, square-only ViTs) and the processor settings."""
        processor = processor or {}
        backbone = getattr(config, "backbone_config", None)
        patch = getattr(config, "patch_size", None) or getattr(backbone, "patch_size", None) or 14
        patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
        multiple = math.lcm(patch, int(processor.get("ensure_multiple_of") or 1))
        default = getattr(config, "image_size", None) or getattr(backbone, "image_size", None) or 518
        target = _parse_size(processor.get("size"), default)
        # DPT on a plain or hybrid ViT reshapes tokens to a square grid: it only takes square input.
        square_only = getattr(config, "model_type", None) == "dpt" and (
            backbone is None or bool(getattr(config, "is_hybrid", False))
        )
        keep_aspect = bool(processor.get("keep_aspect_ratio", True)) and not square_only
        if square_only:
            side = max(target)
            target = (side, side)
        normalize = processor.get("do_normalize", True)
        mean = _triple(processor.get("image_mean", _IMAGENET_MEAN)) if normalize else None
        std = _triple(processor.get("image_std", _IMAGENET_STD)) if normalize else None
        mode = _RESAMPLE.get(int(processor.get("resample", 3)), "bicubic")
        return cls(target=target, multiple=multiple, keep_aspect=keep_aspect, mean=mean, std=std, mode=mode)


def _parse_size(size: object, default: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        for key in ("shortest_edge", "longest_edge"):
            if key in size:
                return int(size[key]), int(size[key])
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(default, list | tuple):
        return int(default[0]), int(default[-1])
    return int(default), int(default)


def _triple(values: object) -> tuple[float, float, float]:
    seq = [float(v) for v in (values if isinstance(values, list | tuple) else [values] * 3)]
    if len(seq) != 3:
        raise DepthModelError(f"image processor mean/std must have 3 values (RGB), got {values!r}")
    return seq[0], seq[1], seq[2]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers at all; saves the hub client's ~25 s of retries
    on machines without network (where ``HF_HUB_OFFLINE`` is not set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_error(model: str, exc: BaseException) -> DepthModelError:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if os.path.isdir(model):
        where = f"the local directory {model!r} does not hold a loadable depth-estimation model ({reason})"
    else:
        where = (
            f"{model!r} is neither a local directory nor in the Hugging Face cache, and it could not be "
            f"downloaded ({reason})"
        )
    repo = DEFAULT_DEPTH_MODEL if os.path.isdir(model) else model
    return DepthModelError(
        f"cannot load depth model: {where}. Options: pass a local directory with the model "
        f"(config.json + weights, e.g. from `hf download {repo} --local-dir DIR`); pre-populate the "
        f"Hugging Face cache on a machine with network (`hf download {repo}`, then copy the cache or "
        "point HF_HOME at it); or use `--depth-model parallax`, the weight-free fallback."
    )


class TransformersDepthEstimator(DepthEstimator):
    """Relative inverse depth from a transformers depth-estimation model.

    Args:
        model: Hugging Face model id or local directory (``save_pretrained`` layout).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: compute dtype; default float16 on CUDA, float32 elsewhere.
        max_batch_size: frames per forward pass; larger batches are processed in chunks.
        input_size: override the processor's target size (``int`` or ``(h, w)``), e.g. 364 for
            speed; the aspect and size-multiple rules still apply.
        polarity: ``"auto"`` (from the config, see :func:`depth_polarity`), ``"inverse"`` or
            ``"metric"``.
        local_files_only: ``True`` never touches the network. ``None`` (default) tries the local
            path / cache first and downloads only if that fails.
        cache_dir, revision: passed to ``from_pretrained``.

    Raises:
        DepthModelError: the weights cannot be loaded (offline, missing, not a depth model); the
            message names the options (local path, pre-populated cache, ``--depth-model parallax``).

    Returns from ``__call__``: ``[B,1,H,W]`` float32 on :attr:`device`, >= 0, larger = nearer, at
    the input resolution; stateless (each frame on its own).

    Example:
        >>> est = TransformersDepthEstimator("path/to/Depth-Anything-V2-Small-hf")  # doctest: +SKIP
        >>> est(torch.rand(4, 3, 270, 480)).shape  # doctest: +SKIP
        torch.Size([4, 1, 270, 480])
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_DEPTH_MODEL,
        device: str | torch.device = "auto",
        *,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 8,
        input_size: int | tuple[int, int] | None = None,
        polarity: Literal["auto", "inverse", "metric"] = "auto",
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if polarity not in ("auto", "inverse", "metric"):
            raise ValueError(f"polarity must be 'auto', 'inverse' or 'metric', got {polarity!r}")
        self.name = str(model)
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.max_batch_size = int(max_batch_size)
        self.model, processor = self._load(self.name, local_files_only, cache_dir, revision)
        self.polarity: Polarity = depth_polarity(self.model.config) if polarity == "auto" else polarity
        spec = InputSpec.from_configs(self.model.config, processor)
        if input_size is not None:
            spec = InputSpec(
                target=_parse_size(input_size, 518),
                multiple=spec.multiple,
                keep_aspect=spec.keep_aspect,
                mean=spec.mean,
                std=spec.std,
                mode=spec.mode,
            )
        self.input_spec = spec
        self._mean = self._std = None
        if spec.mean is not None and spec.std is not None:
            self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

    def _load(
        self, model: str, local_files_only: bool | None, cache_dir: object, revision: str | None
    ) -> tuple[torch.nn.Module, dict | None]:
        from transformers import AutoModelForDepthEstimation

        if local_files_only is None:  # cache (or the directory) first; the network only if that fails
            attempts = [True] if os.path.isdir(model) or not _hub_reachable() else [True, False]
        else:
            attempts = [bool(local_files_only)]
        last: BaseException | None = None
        for offline in attempts:
            try:
                net = AutoModelForDepthEstimation.from_pretrained(
                    model, local_files_only=offline, cache_dir=cache_dir, revision=revision, dtype=self.dtype
                )
            except Exception as exc:  # transformers/hub raise OSError, ValueError, HTTP and httpx errors
                log.debug("loading %s (local_files_only=%s) failed", model, offline, exc_info=True)
                last = exc
                continue
            processor = self._processor_settings(model, offline, cache_dir, revision)
            return net.to(self.device).eval(), processor
        assert last is not None
        raise _load_error(model, last) from last

    @staticmethod
    def _processor_settings(
        model: str, offline: bool, cache_dir: object, revision: str | None
    ) -> dict | None:
        """The model's ``preprocessor_config.json`` as a dict, or None (defaults then apply)."""
        from transformers.utils import cached_file

        try:
            path = cached_file(
                model,
                "preprocessor_config.json",
                local_files_only=offline,
                cache_dir=cache_dir,
                revision=revision,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            if path is None:
                return None
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError) as exc:
            log.warning("no usable image-processor settings for %s (%s); using defaults", model, exc)
            return None

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0, 1] → ``pixel_values`` ``[B,3,h,w]`` in the model dtype, on :attr:`device`."""
        spec = self.input_spec
        _, _, h, w = frames.shape
        size = fit_input_size(h, w, spec.target, spec.multiple, spec.keep_aspect)
        x = frames.to(self.device, torch.float32, non_blocking=True)
        if size != (h, w):
            down = size[0] < h or size[1] < w
            align = None if spec.mode == "nearest" else False
            x = F.interpolate(x, size=size, mode=spec.mode, align_corners=align, antialias=down)
            x = x.clamp(0.0, 1.0)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x.to(self.dtype)

    @torch.inference_mode()
    def _estimate(self, frames: torch.Tensor) -> torch.Tensor:
        _, _, h, w = frames.shape
        outs = []
        for chunk in frames.split(self.max_batch_size):
            raw = self.model(pixel_values=self.preprocess(chunk)).predicted_depth
            if raw.ndim == 3:
                raw = raw.unsqueeze(1)
            raw = raw.float()
            if raw.shape[-2:] != (h, w):
                raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False)
            raw = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
            if self.polarity == "metric":
                outs.append(inverse_depth_from_metric(raw, eps=1e-3))
            else:
                outs.append(raw.clamp(min=0.0))
        return torch.cat(outs)
