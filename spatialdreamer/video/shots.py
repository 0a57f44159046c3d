"""Shot-cut detection on a frame stream (resets temporal state; splits clips)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["CutDetector"]


class CutDetector:
    """Flags the first frame of each new shot from colour-histogram changes.

    A frame starts a shot when the Bhattacharyya distance between its HSV histogram and the
    previous frame's exceeds ``threshold`` and at least ``min_shot`` frames have passed since
    the last cut (so flashes and fast pans do not split a shot into fragments). Stateful:
    feed chunks in order. The very first frame is always a cut.
    """

    def __init__(self, threshold: float = 0.45, min_shot: int = 8, bins: tuple[int, int, int] = (16, 8, 8)):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.min_shot = max(1, int(min_shot))
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self._previous: np.ndarray | None = None
        self._since_cut = 0

    def _histogram(self, frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, (96, 54), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(self.bins), [0, 180, 0, 256, 0, 256])
        return cv2.normalize(hist, hist).astype(np.float32)

    def __call__(self, frames: torch.Tensor) -> list[bool]:
        """``frames`` ``[T,3,H,W]`` uint8 RGB; returns one flag per frame (True = new shot)."""
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be [T,3,H,W] uint8, got {tuple(frames.shape)} {frames.dtype}")
        flags = []
        for frame in frames.permute(0, 2, 3, 1).cpu().numpy():
            hist = self._histogram(np.ascontiguousarray(frame))
            if self._previous is None:
                cut = True
            else:
                distance = cv2.compareHist(self._previous, hist, cv2.HISTCMP_BHATTACHARYYA)
                cut = distance > self.threshold and self._since_cut >= self.min_shot
            self._since_cut = 0 if cut else self._since_cut + 1
            self._previous = hist
            flags.append(bool(cut))
        return flags
