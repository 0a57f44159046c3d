"""Monocular video → stereo video, streamed chunk by chunk so memory stays flat.

decode chunk → depth → shot-level normalisation (reset at cuts) → disparity → forward warp
to the right eye → classical hole fill → stereo layout → encode (source audio copied).
The output appears under its final name only once it is complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spatialdreamer.depth import DEFAULT_DEPTH_MODEL, TemporalNormalizer, load_depth_estimator
from spatialdreamer.dvg import disparity_from_normalized, forward_warp
from spatialdreamer.stereo import FORMATS, compose, fill_holes, layout_tag
from spatialdreamer.video import VideoWriter, probe_video, stream_frames
from spatialdreamer.video.shots import CutDetector

__all__ = ["DEFAULT_DEPTH_MODEL", "ConvertOptions", "ConvertReport", "convert_video", "output_path_for"]

log = logging.getLogger(__name__)

_VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


@dataclass
class ConvertOptions:
    """How to convert. ``budget`` is the disparity range in % of the width; ``convergence``
    the normalised inverse depth on the screen plane (0 = all in front, 1 = all behind)."""

    format: str = "full-sbs"
    depth_model: str = DEFAULT_DEPTH_MODEL
    budget: float = 3.0
    convergence: float = 0.5
    device: str = "auto"
    start: float | None = None
    end: float | None = None
    chunk_size: int = 16
    codec: str = "h264"
    crf: int = 17
    inpaint: bool = True

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0.0 <= self.budget <= 20.0:
            raise ValueError(f"--budget is a % of the width in [0, 20], got {self.budget}")
        if not 0.0 <= self.convergence <= 1.0:
            raise ValueError(f"--convergence must be in [0, 1], got {self.convergence}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"--start must be >= 0 seconds, got {self.start}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"--end ({self.end}) must be after --start ({self.start})")
        if self.chunk_size < 1:
            raise ValueError(f"chunk size must be >= 1, got {self.chunk_size}")


@dataclass
class ConvertReport:
    output: Path
    frames: int
    seconds: float
    width: int
    height: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def output_path_for(source: str | os.PathLike, destination: str | os.PathLike, fmt: str) -> Path:
    """A file destination is used as given; a folder gets ``<stem><layout tag>.mp4``."""
    destination = Path(destination)
    if destination.suffix.lower() in _VIDEO_SUFFIXES:
        return destination
    return destination / f"{Path(source).stem}{layout_tag(fmt)}.mp4"


def _segments(cuts: list[bool]) -> list[tuple[int, int, bool]]:
    """Split a chunk at shot cuts: ``(start, stop, starts_with_cut)``."""
    bounds = [i for i, cut in enumerate(cuts) if cut and i > 0]
    starts = [0, *bounds]
    stops = [*bounds, len(cuts)]
    return [(a, b, cuts[a]) for a, b in zip(starts, stops, strict=True)]


def convert_video(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    options: ConvertOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertReport:
    """Convert one monocular video to a stereo video; see the module docstring.

    ``progress(done_frames, total_frames)`` is called after every chunk.
    Raises :class:`~spatialdreamer.video.VideoError` for unusable input,
    :class:`~spatialdreamer.depth.DepthModelError` for a depth model that cannot load, and
    ``ValueError`` for bad options; no output file is left behind in any of these cases.
    """
    options = options or ConvertOptions()
    options.validate()
    source = os.fspath(source)
    info = probe_video(source)
    out_path = output_path_for(source, destination, options.format)
    if Path(out_path).resolve() == Path(source).resolve():
        raise ValueError(f"output {out_path} would overwrite the input")
    estimator = load_depth_estimator(options.depth_model, device=options.device)
    device = estimator.device
    normalizer = TemporalNormalizer()
    cuts = CutDetector()
    start = options.start or 0.0
    end = options.end
    if end is not None and end > info.duration:
        end = None
    total = round(((end if end is not None else info.duration) - start) * info.fps)
    began = time.perf_counter()
    done = 0
    first_stamp: float | None = None
    with VideoWriter(
        out_path, info.fps, codec=options.codec, crf=options.crf, audio_from=source, audio_range=(start, end)
    ) as writer:
        for chunk in stream_frames(source, options.chunk_size, start=options.start, end=end, info=info):
            frames = chunk.frames.to(device).float().div_(255.0)
            flags = cuts(chunk.frames)
            right = torch.empty_like(frames)
            for a, b, is_cut in _segments(flags):
                if is_cut:
                    estimator.reset()
                    normalizer.reset()
                right[a:b] = _right_eye(frames[a:b], estimator, normalizer, options)
            if first_stamp is None:
                first_stamp = float(chunk.timestamps[0])
            writer.write(compose(frames, right, options.format), timestamps=chunk.timestamps - first_stamp)
            done += len(chunk)
            if progress is not None:
                progress(done, max(total, done))
    return ConvertReport(out_path, done, time.perf_counter() - began, info.width, info.height)


def _right_eye(frames, estimator, normalizer, options: ConvertOptions) -> torch.Tensor:
    inverse_depth = estimator(frames)
    normalized = normalizer(inverse_depth)
    disparity = disparity_from_normalized(normalized, frames.shape[-1], options.budget, options.convergence)
    warped = forward_warp(frames, disparity)
    return fill_holes(warped.image, warped.holes, warped.disparity, inpaint=options.inpaint)
