"""Probe a video once: main stream, display size, frame rate, length, audio; check it decodes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

from spatialdreamer.video.colour import Colour, colour_of_frame, standard_colour
from spatialdreamer.video.decode import DecodeStats, decode_tolerant
from spatialdreamer.video.errors import VideoError
from spatialdreamer.video.streams import display_size, is_still_image, main_video_stream, tail_end_times

__all__ = ["REMOTE_READ_BYTES", "VideoInfo", "open_source", "probe_video"]

# FFmpeg reads a file opened through pyarrow in requests of this size (a range GET each on
# object storage): large enough that a GET's latency does not dominate, small enough that a
# seek into a long video fetches little more than the part that is decoded.
REMOTE_READ_BYTES = 1 << 20


def _is_uri(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def open_source(path: str) -> Iterator[tuple[object, dict]]:
    """``(source, options)`` to pass to ``av.open(source, **options)`` for a local path or a URI.

    A local path (or ``file://`` URI) is handed to FFmpeg as a path. Any other URI (``s3://``,
    ``gs://``, ...) is opened as a seekable pyarrow file, closed on exit: FFmpeg reads only the
    byte ranges it needs (index, seek targets, the decoded range) and nothing is downloaded
    whole.
    """
    if not _is_uri(path):
        yield path, {}
        return
    import pyarrow.fs as pafs

    from spatialdreamer.data import storage

    fs, inner = storage.open_filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        yield inner, {}
        return
    with fs.open_input_file(inner) as handle:
        yield handle, {"buffer_size": REMOTE_READ_BYTES}


@dataclass(frozen=True)
class VideoInfo:
    """What the rest of the pipeline needs to know about a source video.

    ``width``/``height`` are the displayed size: square pixels (an anamorphic picture is
    stretched by its ``sample_aspect_ratio``) after ``rotation`` (degrees counter-clockwise);
    ``coded_width``/``coded_height`` are the size as stored. Frame count and duration are the
    main video stream's, not the container's (audio may outlast the video): ``frame_count``
    comes from the stream header when it has one (``frame_count_exact``), else duration x fps.
    ``stream_index`` is the main video stream (cover art and secondary streams are skipped).
    ``is_image`` is true for a still image, whatever its file name says. ``colour`` is the
    source's matrix, range, primaries and transfer (untagged parts as players assume them),
    ``bit_depth`` the bits per sample of its pixel format (10 for ``yuv420p10le``).
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
    coded_width: int = 0
    coded_height: int = 0
    sample_aspect_ratio: Fraction = Fraction(1)
    stream_index: int = 0
    frame_count_exact: bool = False
    is_image: bool = False
    colour: Colour = field(default_factory=Colour)
    bit_depth: int = 8

    @property
    def anamorphic(self) -> bool:
        return self.sample_aspect_ratio != 1


def _check_file(path: str) -> None:
    if _is_uri(path):
        _check_remote_file(path)
        return
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty")


def _check_remote_file(path: str) -> None:
    import pyarrow.fs as pafs

    from spatialdreamer.data import storage

    fs, inner = storage.open_filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise VideoError(path, "file not found")
    if info.type == pafs.FileType.Directory:
        raise VideoError(path, "is a directory, not a video file")
    if info.size == 0:
        raise VideoError(path, "file is empty")


# Packets that may fail before the first good frame (a recording joined mid-GOP, corrupt
# first packets) before the probe calls a file undecodable.
PROBE_MAX_BAD_PACKETS = 1000


def probe_video(path: str | os.PathLike, decode_check: bool = True) -> VideoInfo:
    """Read a video's metadata; with ``decode_check`` also decode its first good frame.

    ``path`` is a local path or a URI (read by range, see :func:`open_source`).

    Raises:
        VideoError: missing/empty file, not a video, no video stream, or no decodable frame.
    """
    path = os.fspath(path)
    _check_file(path)
    with open_source(path) as (source, options):
        return _probe(path, source, options, decode_check)


def _probe(path: str, source, options: dict, decode_check: bool) -> VideoInfo:
    try:
        container = av.open(source, **options)
    except av.error.EOFError as exc:
        raise VideoError(path, "has zero frames (the file ends before any video data)") from exc
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(path, f"not a readable video ({type(exc).__name__}: {_one_line(exc)})") from exc
    with container:
        stream, reason = main_video_stream(container)
        if stream is None:
            raise VideoError(path, reason)
        image = is_still_image(container, stream)
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        time_base = stream.time_base
        start_time = float(stream.start_time * time_base) if stream.start_time and time_base else 0.0
        sar = stream.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        rotation = 0
        coded_width, coded_height = stream.codec_context.width, stream.codec_context.height
        first = None
        if decode_check:
            first = _first_frame(container, stream, path)
            rotation = int(first.rotation or 0) % 360
            coded_width, coded_height = first.width, first.height
        if fps <= 0:
            raise VideoError(path, "has no usable frame rate")
        width, height = display_size(coded_width, coded_height, sar)
        if rotation in (90, 270):
            width, height = height, width
        colour = (
            colour_of_frame(first, width, height) if first is not None else standard_colour(width, height)
        )
        pixel_format = first.format if first is not None else stream.codec_context.format
        bit_depth = max((c.bits for c in pixel_format.components), default=8) if pixel_format else 8
        exact = bool(stream.frames) and not image
        if image:
            frame_count, duration = 1, 1.0 / fps
        else:
            duration = _stream_duration(container, stream, start_time, fps)
            frame_count = int(stream.frames) if exact else round(duration * fps)
            duration = duration or (frame_count / fps)
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            duration=duration,
            rotation=rotation,
            codec=stream.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            average_rate=stream.average_rate,
            time_base=time_base,
            start_time=start_time,
            coded_width=coded_width,
            coded_height=coded_height,
            sample_aspect_ratio=sar,
            stream_index=stream.index,
            frame_count_exact=exact,
            is_image=image,
            colour=colour,
            bit_depth=bit_depth,
        )


def _stream_duration(container, stream, start_time: float, fps: float) -> float:
    """The video stream's own duration: from its header; else from where its last packet
    ends (Matroska keeps no per-stream duration, and the container's counts the audio too);
    else, and for a file whose data stop well short of the length its header declares (cut
    short), the container's declared length."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    declared = container.duration / av.time_base if container.duration is not None else None
    video_end, data_end = tail_end_times(container, stream)
    if declared and data_end is not None:
        origin = container.start_time / av.time_base if container.start_time is not None else start_time
        if data_end - origin < 0.9 * declared - 1.0 / fps:
            return declared  # truncated: the reader reports the frames that are missing
    if video_end is not None and video_end > start_time:
        return video_end - start_time
    return declared or 0.0


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _first_frame(container, stream, path: str):
    stats = DecodeStats()
    try:
        for frame in decode_tolerant(container, stream, stats, path, give_up_after=PROBE_MAX_BAD_PACKETS):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"video stream does not decode ({_one_line(exc)})") from exc
    if stats.rejected:
        raise VideoError(path, stats.undecodable())
    raise VideoError(path, "video stream has zero frames")
