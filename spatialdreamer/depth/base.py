"""The depth-estimator interface shared by every backend, and its input checks.

Every backend maps a batch of RGB frames to *relative inverse depth* (larger = nearer) at the
input resolution. The values are only defined up to an unknown scale and shift per model (and,
for relative models, per frame); :class:`~spatialdreamer.depth.normalize.TemporalNormalizer`
turns them into a shot-stable normalised inverse depth, and ``spatialdreamer.dvg`` turns that
into pixel disparity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["DepthEstimator", "DepthModelError", "check_frames", "resolve_device"]


class DepthModelError(RuntimeError):
    """A depth model cannot be loaded or used; the message says what to do instead."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device if there is one, else the CPU; anything else is parsed.

    Raises:
        ValueError: ``device`` is not a device string torch understands.
        DepthModelError: a CUDA device is asked for but CUDA is not available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DepthModelError(f"device {device!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


def check_frames(frames: torch.Tensor, name: str = "frames") -> None:
    """Raise ``ValueError`` unless ``frames`` is a float ``[B,3,H,W]`` tensor with B, H, W >= 1.

    Values are expected in [0, 1]; they are not scanned (that would cost a device sync per batch).
    """
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B,3,H,W], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"{name} must be [B,3,H,W] (RGB in [0, 1]), got shape {tuple(frames.shape)}")
    if min(frames.shape[0], frames.shape[2], frames.shape[3]) < 1:
        raise ValueError(f"{name} must be non-empty [B,3,H,W], got shape {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor in [0, 1], got {frames.dtype} (uint8: use frames.float() / 255)"
        )


class DepthEstimator(ABC):
    """Monocular depth: RGB frames ``[B,3,H,W]`` float in [0, 1] → relative inverse depth.

    ``__call__`` returns ``[B,1,H,W]`` float32 on :attr:`device`, at the input resolution,
    larger = nearer, finite and >= 0. Frames in a batch are treated as consecutive frames of one
    video; stateful backends (:attr:`stateful`) carry state across calls until :meth:`reset`,
    which callers invoke at every cut and at the start of every new video.
    """

    #: short identifier of the backend and model, e.g. ``"parallax"`` or a Hugging Face id
    name: str
    #: where the estimator computes and returns its output
    device: torch.device
    #: whether the output for a frame depends on earlier frames (see :meth:`reset`)
    stateful: bool = False

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Relative inverse depth ``[B,1,H,W]`` float32 on :attr:`device` for ``frames`` ``[B,3,H,W]``."""
        check_frames(frames)
        out = self._estimate(frames)
        b, _, h, w = frames.shape
        if out.shape != (b, 1, h, w):  # a backend bug, not a user error
            raise RuntimeError(f"{self.name} returned {tuple(out.shape)}, expected {(b, 1, h, w)}")
        return out

    @abstractmethod
    def _estimate(self, frames: torch.Tensor) -> torch.Tensor:
        """Backend work on checked input; must return ``[B,1,H,W]`` float32 on :attr:`device`."""

    def reset(self) -> None:
        """Forget state from earlier frames (call at cuts). Stateless backends hold none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"
