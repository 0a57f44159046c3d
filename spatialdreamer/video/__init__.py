"""Video I/O: streaming decode (bounded memory), random access, encoding with audio, lossless."""

from spatialdreamer.video.decode import DecodeStats
from spatialdreamer.video.errors import VideoError
from spatialdreamer.video.probe import VideoInfo, probe_video
from spatialdreamer.video.reader import ArrayChunk, FrameChunk, read_frames, stream_arrays, stream_frames
from spatialdreamer.video.writer import VideoWriter, read_lossless, write_lossless

__all__ = [
    "ArrayChunk",
    "DecodeStats",
    "FrameChunk",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_frames",
    "read_lossless",
    "stream_arrays",
    "stream_frames",
    "write_lossless",
]
