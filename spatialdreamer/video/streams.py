"""Facts about a container's streams that real-world files make tricky.

Which video stream is the main one (cover art and second angles exist), whether the "video"
is a still image under a video name, the square-pixel size of an anamorphic picture, and
where the video stream itself ends (containers report the longest stream, audio included).
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
from av.stream import Disposition

__all__ = ["display_size", "is_still_image", "main_video_stream", "tail_end_times"]

# Demuxers that read one picture, not a video: FFmpeg's image2 family ("png_pipe", ...).
_IMAGE_FORMATS = {"image2", "image2pipe"}


def main_video_stream(container) -> tuple[object | None, str | None]:
    """The stream to decode: the first video stream that is not an attached picture (cover
    art), preferring one marked default. Returns ``(stream, None)``, or ``(None, reason)``."""
    video = list(container.streams.video)
    if not video:
        return None, "contains no video stream"
    moving = [s for s in video if not s.disposition & Disposition.attached_pic]
    if not moving:
        return None, "contains no video stream (only cover art)"
    default = [s for s in moving if s.disposition & Disposition.default]
    return (default or moving)[0], None


def is_still_image(container, stream) -> bool:
    """True when the input is one picture (a PNG/JPEG/... whatever its file name says)."""
    name = container.format.name or ""
    if any(part.endswith("_pipe") or part in _IMAGE_FORMATS for part in name.split(",")):
        return True
    return bool(stream.disposition & Disposition.still_image)


def display_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """The square-pixel size of a ``width`` x ``height`` picture with sample aspect ``sar``.

    Pixels are stretched, never dropped: a wide SAR widens the picture, a tall one makes it
    taller. ``sar`` of ``None``, 0 or 1 leaves the size as it is.
    """
    if not sar or sar <= 0 or sar == 1:
        return width, height
    if sar > 1:
        return max(1, round(width * sar)), height
    return width, max(1, round(height / sar))


def tail_end_times(container, stream) -> tuple[float | None, float | None]:
    """Where ``stream`` ends and where the file's data end (any stream), in seconds on the
    streams' clock: each packet's time plus its duration, read from the last keyframe of
    ``stream`` on. Only the tail of the file is read.

    ``(None, None)`` when the container cannot seek or has no timestamps. The container is
    left at an arbitrary position: seek before decoding again.
    """
    if stream.time_base is None:
        return None, None
    if container.duration is not None:
        offset = (stream.start_time or 0) + math.ceil(container.duration / av.time_base / stream.time_base)
    else:
        offset = 2**62
    try:
        container.seek(offset, stream=stream, backward=True)
    except av.error.FFmpegError:
        return None, None
    video_end = data_end = None
    try:
        for packet in container.demux():
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or not packet.size or packet.time_base is None:
                continue
            end = float((stamp + (packet.duration or 0)) * packet.time_base)
            data_end = end if data_end is None else max(data_end, end)
            if packet.stream.index == stream.index:
                video_end = end if video_end is None else max(video_end, end)
    except av.error.FFmpegError:
        pass  # a damaged tail: the packets read so far say where the data end
    return video_end, data_end
