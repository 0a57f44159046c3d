"""Monocular video → stereo video, streamed chunk by chunk so memory stays flat.

decode chunk → depth → shot-level normalisation (reset at cuts) → disparity → forward warp
to the right eye → classical hole fill → stereo layout → encode (source audio copied).
The output appears under its final name only once it is complete.

Decoding, depth, rendering (warp, fill, layout) and encoding run overlapped, each in its own
thread with at most one chunk waiting between two of them
(:func:`spatialdreamer.runtime.run_overlapped`), so a chunk is decoded while the one before
it is warped and the one before that is encoded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spatialdreamer.depth import DEFAULT_DEPTH_MODEL, TemporalNormalizer, load_depth_estimator
from spatialdreamer.dvg import disparity_from_normalized, forward_warp
from spatialdreamer.runtime import run_overlapped
from spatialdreamer.stereo import FORMATS, compose, fill_holes, layout_tag
from spatialdreamer.video import VideoWriter, probe_video, stream_frames
from spatialdreamer.video.shots import CutDetector

__all__ = ["DEFAULT_DEPTH_MODEL", "ConvertOptions", "ConvertReport", "convert_video", "output_path_for"]

log = logging.getLogger(__name__)

_VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


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
    # x264/x265 speed: "veryfast" encodes full-SBS 720p in ~35 ms of CPU per frame against ~95 ms
    # for "medium", at the same CRF quality target (files ~15-30 % larger); slower = smaller
    preset: str = "veryfast"
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
        if self.preset not in _PRESETS:
            raise ValueError(f"preset must be one of {', '.join(_PRESETS)}, got {self.preset!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk size must be >= 1, got {self.chunk_size}")


@dataclass
class ConvertReport:
    """What a conversion did. ``stage_seconds``: busy wall time of each stage (decode, cuts,
    depth, warp, fill, compose, encode); stages overlap, so they add up to more than
    ``seconds``, and the largest bounds the frame rate."""

    output: Path
    frames: int
    seconds: float
    width: int
    height: int
    stage_seconds: dict[str, float] = field(default_factory=dict)

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
    timings = {name: 0.0 for name in ("decode", "cuts", "depth", "warp", "fill", "compose", "encode")}
    done = 0
    first_stamp: float | None = None

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] += time.perf_counter() - start
        return result

    def depth_stage(chunk):
        flags = timed("cuts", cuts, chunk.frames)
        start = time.perf_counter()
        frames = chunk.frames.to(device)
        disparity = None
        for a, b, is_cut in _segments(flags):
            if is_cut:
                estimator.reset()
                normalizer.reset()
            part = _disparity(frames[a:b].float().div_(255.0), estimator, normalizer, options)
            if disparity is None:
                disparity = part.new_empty((len(chunk), *part.shape[1:]))
            disparity[a:b] = part
        timings["depth"] += time.perf_counter() - start
        return chunk, disparity

    def render_stage(item):
        chunk, disparity = item
        frames = chunk.frames.to(device).float().div_(255.0)
        right = _right_eye(frames, disparity, options, timings)
        start = time.perf_counter()
        if options.format in ("full-sbs", "full-tb"):  # the left eye goes out as decoded
            packed = compose(chunk.frames.to(device), _to_uint8(right), options.format)
        else:
            packed = _to_uint8(compose(frames, right, options.format))
        timings["compose"] += time.perf_counter() - start
        return chunk.timestamps, packed.cpu()

    with VideoWriter(
        out_path,
        info.fps,
        codec=options.codec,
        crf=options.crf,
        preset=options.preset,
        audio_from=source,
        audio_range=(start, end),
    ) as writer:

        def encode_stage(item):
            nonlocal done, first_stamp
            stamps, packed = item
            if first_stamp is None:
                first_stamp = float(stamps[0])
            writer.write(packed, timestamps=stamps - first_stamp)
            done += len(packed)
            if progress is not None:
                progress(done, max(total, done))

        chunks = stream_frames(source, options.chunk_size, start=options.start, end=end, info=info)
        run_overlapped(
            ("decode", chunks),
            [("depth", depth_stage), ("render", render_stage), ("encode", encode_stage)],
            timings=timings,
        )
    timings.pop("render")  # its parts: warp, fill, compose
    return ConvertReport(out_path, done, time.perf_counter() - began, info.width, info.height, timings)


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.clamp(0.0, 1.0).mul_(255.0).add_(0.5).to(torch.uint8)


def _disparity(frames, estimator, normalizer, options: ConvertOptions) -> torch.Tensor:
    inverse_depth = estimator(frames)
    normalized = normalizer(inverse_depth)
    return disparity_from_normalized(normalized, frames.shape[-1], options.budget, options.convergence)


def _right_eye(frames, disparity, options: ConvertOptions, timings: dict[str, float]) -> torch.Tensor:
    start = time.perf_counter()
    warped = forward_warp(frames, disparity)
    middle = time.perf_counter()
    right = fill_holes(warped.image, warped.holes, warped.disparity, inpaint=options.inpaint)
    timings["warp"] += middle - start
    timings["fill"] += time.perf_counter() - middle
    return right
