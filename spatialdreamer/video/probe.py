"""Probe a video once: size after rotation, frame rate, length, audio; and check it decodes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av

from spatialdreamer.video.errors import VideoError

__all__ = ["VideoInfo", "probe_video"]


@dataclass(frozen=True)
class VideoInfo:
    """What the rest of the pipeline needs to know about a source video.

    ``width``/``height`` are the displayed size (after ``rotation``, degrees counter-clockwise).
    ``frame_count`` comes from the container header when it has one, else duration x fps.
    """

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    rotation: int
    codec: str
    has_audio: bool
    audio_codec: str | None
    average_rate: Fraction | None
    time_base: Fraction | None
    start_time: float


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty")


def probe_video(path: str | os.PathLike, decode_check: bool = True) -> VideoInfo:
    """Read a video's metadata; with ``decode_check`` also decode its first frame.

    Raises:
        VideoError: missing/empty file, not a video, no video stream, or no decodable frame.
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        container = av.open(path)
    except av.error.EOFError as exc:
        raise VideoError(path, "has zero frames (the file ends before any video data)") from exc
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(path, f"not a readable video ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoError(path, "contains no video stream")
        stream = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frame_count = int(stream.frames or 0) or (round(duration * fps) if fps else 0)
        start_time = (
            float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        )
        rotation = 0
        width, height = stream.codec_context.width, stream.codec_context.height
        if decode_check:
            first = _first_frame(container, stream, path)
            rotation = int(first.rotation or 0) % 360
            width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        if fps <= 0:
            raise VideoError(path, "has no usable frame rate")
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            duration=duration or (frame_count / fps),
            rotation=rotation,
            codec=stream.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            average_rate=stream.average_rate,
            time_base=stream.time_base,
            start_time=start_time,
        )


def _first_frame(container, stream, path: str):
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"video stream does not decode ({exc})") from exc
    raise VideoError(path, "video stream has zero frames")
