"""Frame reading: streaming decode in bounded chunks (PyAV) and random access (decord).

Streaming keeps at most one chunk of frames in memory, whatever the video's length. Each
backend falls back to the other when it is not installed or fails to open a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np
import torch

from spatialdreamer.video.errors import VideoError
from spatialdreamer.video.probe import VideoInfo, probe_video

__all__ = ["FrameChunk", "read_frames", "stream_frames"]

log = logging.getLogger(__name__)


@dataclass
class FrameChunk:
    """Consecutive frames: ``frames`` ``[T,3,H,W]`` uint8 RGB (upright), ``timestamps`` ``[T]``
    float64 seconds from the stream's start (variable frame rate kept), ``start_index`` the
    index of the first frame in the decoded sequence."""

    frames: torch.Tensor
    timestamps: torch.Tensor
    start_index: int

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _upright(array: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (counter-clockwise degrees) to ``[..., H, W, 3]`` pixels."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(array, k=k, axes=(-3, -2))) if k else array


def _decord_upright(batch: np.ndarray, info: VideoInfo) -> np.ndarray:
    """decord's FFmpeg build applies the display rotation itself; rotate only if it did not."""
    if batch.shape[1:3] == (info.height, info.width):
        return batch
    return _upright(batch, info.rotation)


def _to_chunk(arrays: list[np.ndarray], stamps: list[float], start_index: int) -> FrameChunk:
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return FrameChunk(frames, torch.tensor(stamps, dtype=torch.float64), start_index)


def stream_frames(
    path: str | os.PathLike,
    chunk_size: int = 16,
    start: float | None = None,
    end: float | None = None,
    info: VideoInfo | None = None,
    backend: str = "auto",
    check_complete: bool = True,
) -> Iterator[FrameChunk]:
    """Decode ``[start, end)`` seconds of a video in chunks of ``chunk_size`` frames.

    Args:
        check_complete: raise :class:`VideoError` at the end if clearly fewer frames decoded
            than the container promised (a truncated file), instead of ending quietly.
        backend: "auto" (PyAV, decord on failure), "pyav" or "decord".
    """
    path = os.fspath(path)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    info = info or probe_video(path)
    if backend in ("auto", "pyav"):
        try:
            yield from _stream_pyav(path, chunk_size, start, end, info, check_complete)
            return
        except VideoError:
            raise
        except av.error.FFmpegError as exc:
            if backend == "pyav" or not _has_decord():
                raise VideoError(path, f"decoding failed ({exc})") from exc
            log.warning("PyAV failed on %s (%s); falling back to decord", path, exc)
    yield from _stream_decord(path, chunk_size, start, end, info)


def _stream_pyav(path, chunk_size, start, end, info, check_complete) -> Iterator[FrameChunk]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = info.start_time
        if start:
            container.seek(int((start + t0) / stream.time_base), stream=stream, backward=True)
        arrays: list[np.ndarray] = []
        stamps: list[float] = []
        index = 0
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                ts = float(frame.pts * stream.time_base) - t0 if frame.pts is not None else index / info.fps
                if start is not None and ts < start - 0.5 / info.fps:
                    continue
                if end is not None and ts >= end - 0.5 / info.fps:
                    break
                arrays.append(_upright(frame.to_ndarray(format="rgb24"), info.rotation))
                stamps.append(ts)
                if len(arrays) == chunk_size:
                    yield _to_chunk(arrays, stamps, index)
                    index += len(arrays)
                    arrays, stamps = [], []
        except av.error.InvalidDataError as exc:
            raise VideoError(
                path, f"truncated or corrupt after {index + len(arrays)} frames ({exc})"
            ) from exc
        if arrays:
            yield _to_chunk(arrays, stamps, index)
            index += len(arrays)
        if index == 0:
            raise VideoError(path, "no frames in the requested range")
        whole = start is None and end is None
        if check_complete and whole and info.frame_count and decoded < 0.9 * info.frame_count - 1:
            raise VideoError(path, f"truncated: decoded {decoded} of {info.frame_count} frames")


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _decord_reader(path: str):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0))
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError
        raise VideoError(path, f"decord cannot open it ({exc})") from exc


def _stream_decord(path, chunk_size, start, end, info) -> Iterator[FrameChunk]:
    reader = _decord_reader(path)
    n = len(reader)
    first = round(start * info.fps) if start else 0
    last = min(n, round(end * info.fps)) if end else n
    if first >= last:
        raise VideoError(path, "no frames in the requested range")
    for i in range(first, last, chunk_size):
        idx = list(range(i, min(i + chunk_size, last)))
        batch = _decord_upright(reader.get_batch(idx).asnumpy(), info)
        stamps = [float(reader.get_frame_timestamp(j)[0]) for j in idx]
        yield _to_chunk(list(batch), stamps, i - first)


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], info: VideoInfo | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Random access: frames at ``indices`` as ``[N,3,H,W]`` uint8 (decord; PyAV fallback)."""
    path = os.fspath(path)
    info = info or probe_video(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices is empty")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    if backend in ("auto", "decord") and _has_decord():
        try:
            reader = _decord_reader(path)
            if max(indices) >= len(reader):
                raise IndexError(f"frame {max(indices)} requested, video has {len(reader)} frames")
            batch = _decord_upright(reader.get_batch(indices).asnumpy(), info)
            return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
        except VideoError:
            if backend == "decord":
                raise
            log.warning("decord failed on %s; falling back to PyAV", path)
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    position = 0
    for chunk in stream_frames(path, chunk_size=32, info=info, backend="pyav", check_complete=False):
        for j in range(len(chunk)):
            if position + j in wanted:
                found[position + j] = chunk.frames[j].permute(1, 2, 0).numpy()
        position += len(chunk)
        if position > wanted[-1]:
            break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise IndexError(f"frame {missing[0]} requested, video has {position} frames")
    return torch.from_numpy(np.stack([found[i] for i in indices])).permute(0, 3, 1, 2).contiguous()
