"""Clip planning: shots → fixed-length clips, and frames → the training resolution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Clip", "ClipSplitter", "clip_ranges", "resize_and_crop"]


def clip_ranges(
    shot_starts: Sequence[int],
    total_frames: int,
    clip_length: int,
    stride: int,
    min_length: int,
    trim: int = 0,
) -> list[tuple[int, int, int]]:
    """``(shot_index, start, end)`` frame ranges of the clips of a video; clips never cross cuts.

    Each shot is cut into windows of ``clip_length`` every ``stride`` frames; a shot's tail
    shorter than ``clip_length`` becomes one clip if it has at least ``min_length`` frames.
    ``trim`` frames are left out on both sides of every cut (not at the video's first or last
    frame): frames next to a cut are often part of a transition or compressed badly.

    Example:
        >>> clip_ranges([0, 20], 50, clip_length=8, stride=8, min_length=4)
        [(0, 0, 8), (0, 8, 16), (0, 16, 20), (1, 20, 28), (1, 28, 36), (1, 36, 44), (1, 44, 50)]
        >>> clip_ranges([0, 20], 50, clip_length=8, stride=8, min_length=4, trim=2)
        [(0, 0, 8), (0, 8, 16), (1, 22, 30), (1, 30, 38), (1, 38, 46), (1, 46, 50)]
    """
    if clip_length < 1 or stride < 1 or not 1 <= min_length <= clip_length or trim < 0:
        raise ValueError(
            f"need clip_length >= 1, stride >= 1, 1 <= min_length <= clip_length, trim >= 0; "
            f"got {clip_length}, {stride}, {min_length}, {trim}"
        )
    starts = sorted({s for s in shot_starts if 0 <= s < total_frames} | {0}) if total_frames > 0 else []
    ranges = []
    for shot, begin in enumerate(starts):
        stop = starts[shot + 1] - trim if shot + 1 < len(starts) else total_frames
        position = begin + trim if begin > 0 else begin
        while position < stop:
            end = min(position + clip_length, stop)
            if end - position >= min_length:
                ranges.append((shot, position, end))
            if end == stop:
                break
            position += stride
    return ranges


def resize_and_crop(frames: torch.Tensor | np.ndarray, width: int, height: int) -> torch.Tensor | np.ndarray:
    """Scale uint8 frames to cover ``width x height`` and centre-crop to it: a tensor
    ``[T,3,H,W]`` gives a tensor, an array ``[T,H,W,3]`` (channel last, as decoded) an array."""
    array = isinstance(frames, np.ndarray)
    if frames.ndim != 4 or frames.shape[3 if array else 1] != 3:
        layout = "[T,H,W,3] array" if array else "[T,3,H,W] tensor"
        raise ValueError(f"frames must be a {layout}, got {tuple(frames.shape)}")
    h, w = frames.shape[1:3] if array else frames.shape[2:]
    if (h, w) == (height, width):
        return frames
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = []
    for frame in frames if array else frames.permute(0, 2, 3, 1).cpu().numpy():
        resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
        y0, x0 = (new_h - height) // 2, (new_w - width) // 2
        out.append(resized[y0 : y0 + height, x0 : x0 + width])
    if array:
        return np.stack(out)
    import torch

    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@dataclass
class Clip:
    """A clip cut from a frame stream: frames ``[start, stop)`` of shot ``shot``.

    ``frames`` stacked as pushed (``[T,3,H,W]`` tensors or ``[T,H,W,3]`` arrays);
    ``start_time``/``end_time`` are the timestamps of the first and last frame (seconds)."""

    shot: int
    start: int
    stop: int
    frames: torch.Tensor | np.ndarray
    start_time: float
    end_time: float


class ClipSplitter:
    """Cuts a frame stream into the clips :func:`clip_ranges` plans, without knowing the length.

    Push frames in order with their shot-cut flags; each push returns the clips it completed.
    A window is handed on once ``trim`` more frames have come without a cut (so it is not too
    close to the next cut). It holds at most ``clip_length + trim`` frames, so memory does not
    grow with the video, and the clips are exactly
    ``clip_ranges(cuts, total, clip_length, stride, min_length, trim)``.
    """

    def __init__(self, clip_length: int, stride: int, min_length: int, trim: int = 0):
        clip_ranges([], 0, clip_length, stride, min_length, trim)  # validates the arguments
        self.clip_length, self.stride, self.min_length, self.trim = clip_length, stride, min_length, trim
        self.buffer: list[tuple[int, torch.Tensor | np.ndarray, float]] = []  # (index, frame, timestamp)
        self.index = -1  # index of the last frame pushed
        self.shot = -1
        self.next_start = 0  # start of the next window in this shot
        self.covered = 0  # end of the last clip emitted in this shot

    def push(self, frame: torch.Tensor | np.ndarray, timestamp: float, cut: bool) -> list[Clip]:
        self.index += 1
        ready = []
        if cut or self.shot < 0:
            if self.index > 0:
                ready.extend(self._close(self.index - self.trim))
            self.shot += 1
            self.next_start = self.index + (self.trim if self.index > 0 else 0)
            self.covered = self.index
            self.buffer = []
        if self.index >= self.next_start:
            self.buffer.append((self.index, frame, timestamp))
        if self.index + 1 - self.next_start == self.clip_length + self.trim:
            ready.append(self._make(self.next_start, self.next_start + self.clip_length))
            self._advance()
        return ready

    def finish(self) -> list[Clip]:
        """The last shot's remaining clips, if long enough; call once after the last frame."""
        ready = self._close(self.index + 1) if self.shot >= 0 else []
        self.buffer = []
        return ready

    def _advance(self) -> None:
        self.next_start += self.stride
        self.buffer = [b for b in self.buffer if b[0] >= self.next_start]

    def _close(self, stop: int) -> list[Clip]:
        """End the current shot at ``stop``: its full windows not yet handed on, then its tail."""
        ready = []
        while self.next_start + self.clip_length <= stop:
            ready.append(self._make(self.next_start, self.next_start + self.clip_length))
            self._advance()
        start = self.next_start
        if self.covered < stop and stop - start >= self.min_length:
            ready.append(self._make(start, stop))
        return ready

    def _make(self, start: int, stop: int) -> Clip:
        items = [b for b in self.buffer if start <= b[0] < stop]
        self.covered = stop
        frames = [b[1] for b in items]
        if isinstance(frames[0], np.ndarray):
            stacked = np.stack(frames)
        else:
            import torch

            stacked = torch.stack(frames)
        return Clip(self.shot, start, stop, stacked, items[0][2], items[-1][2])
