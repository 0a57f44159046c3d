"""Decoding that goes past bad packets, as players do, and counts what it had to drop.

A file whose first packets are corrupt, or a transport stream joined mid-GOP, still has good
frames after its next keyframe. The decoder rejects some packets outright and silently skips
others (frames whose reference frames are missing); both are counted as dropped frames.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import av

from spatialdreamer.video.errors import VideoError

__all__ = ["DecodeStats", "decode_tolerant"]

log = logging.getLogger(__name__)

# Decoders hold a few frames (reordering, threads); more packets than this awaiting a frame
# means their timestamps do not match the frames', and the exact count waits for the end.
_MAX_PENDING = 512


@dataclass
class DecodeStats:
    """What one pass of decoding met; filled in as frames are read.

    ``dropped`` counts the video packets (frames) the decoder could not turn into a picture:
    rejected as invalid, or skipped for want of a reference frame. It is exact once decoding
    reached the end of the file, and a lower bound before. ``rescaled`` counts frames scaled
    to the first frame's size because the resolution changed mid-stream. ``read_error`` is set
    when the file could not be read to its end (damaged or truncated).
    """

    packets: int = 0
    decoded: int = 0
    dropped: int = 0
    rejected: int = 0
    rescaled: int = 0
    read_error: str | None = None
    last_error: str | None = None

    def undecodable(self) -> str:
        """The one-line reason for a stream that gave no frame at all."""
        return f"video stream does not decode ({self.rejected} packets failed: {self.last_error})"

    def reset(self) -> None:
        self.__init__()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def decode_tolerant(
    container, stream, stats: DecodeStats, path: str, give_up_after: int | None = None
) -> Iterator[av.VideoFrame]:
    """Decode ``stream`` from the container's current position, skipping undecodable packets.

    Args:
        give_up_after: raise :class:`VideoError` when this many packets failed before any frame
            decoded (a file that is not really decodable), instead of reading all of it.
    """
    pending: list[int] = []  # timestamps of packets sent that no frame has accounted for yet
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            stats.read_error = _one_line(exc)
            log.warning("%s: reading stopped early (%s)", path, stats.read_error)
            packet = None  # flush the decoder: the frames it holds are good
        if packet is not None and packet.size:
            stats.packets += 1
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None:
                heapq.heappush(pending, stamp)
                if len(pending) > _MAX_PENDING:  # frames that never match (odd timestamps):
                    heapq.heappop(pending)  # bounded; the count is settled at the end
        try:
            frames = stream.decode(packet)
        except av.error.EOFError:
            frames = []
        except av.error.FFmpegError as exc:
            stats.rejected += 1
            stats.last_error = _one_line(exc)
            if give_up_after is not None and stats.decoded == 0 and stats.rejected >= give_up_after:
                raise VideoError(path, stats.undecodable()) from exc
            continue
        for frame in frames:
            stats.decoded += 1
            if frame.pts is not None:
                # frames come out in presentation order: packets stamped before this frame that
                # produced nothing were dropped by the decoder
                accounted = 0
                while pending and pending[0] <= frame.pts:
                    heapq.heappop(pending)
                    accounted += 1
                stats.dropped += max(0, accounted - 1)
            yield frame
        if packet is None:
            break
    stats.dropped = max(stats.dropped, stats.packets - stats.decoded)
