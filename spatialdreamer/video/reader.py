"""Frame reading: streaming decode in bounded chunks (PyAV) and random access (decord).

Streaming keeps at most one chunk of frames in memory, whatever the video's length. Each
backend falls back to the other when it is not installed or fails to open a file. A path may
be a URI (``s3://``, ``gs://``, ...): PyAV then reads it by range through a seekable pyarrow
file, so decoding a time range of a long remote video fetches about that range, not the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from av.stream import Discard
from av.video.reformatter import Interpolation

from spatialdreamer.video.colour import colour_of_frame, sws_colorspace, sws_range
from spatialdreamer.video.decode import DecodeStats, decode_tolerant
from spatialdreamer.video.errors import VideoError
from spatialdreamer.video.probe import VideoInfo, open_source, probe_video

if TYPE_CHECKING:
    import torch

__all__ = ["ArrayChunk", "DecodeStats", "FrameChunk", "read_frames", "stream_arrays", "stream_frames"]

log = logging.getLogger(__name__)

# YUV -> RGB with the source's own matrix and range (see spatialdreamer.video.colour), chroma
# interpolated per pixel and rounded to nearest: swscale's default path is up to 3 levels off
# on saturated colours and darkens every decode/encode round trip (decord uses that default)
_ACCURATE = Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_EXACT = Interpolation.BILINEAR | _ACCURATE
_BICUBIC = Interpolation.BICUBIC | _ACCURATE


@dataclass
class FrameChunk:
    """Consecutive frames: ``frames`` ``[T,3,H,W]`` uint8 RGB (``uint16``, 0–65535, when more
    bits were asked for and the source has them; upright, square pixels, every frame at the
    first frame's size), ``timestamps`` ``[T]`` float64 seconds from the stream's
    start (variable frame rate kept), ``start_index`` the index of the first frame in the
    decoded sequence, ``dropped`` the undecodable frames skipped so far (cumulative)."""

    frames: torch.Tensor
    timestamps: torch.Tensor
    start_index: int
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class ArrayChunk:
    """:class:`FrameChunk`'s frames as decoded, without torch: ``frames`` ``[T,H,W,3]`` (channel
    last), ``timestamps`` ``[T]`` float64; the corpus's CPU stages work on these."""

    frames: np.ndarray
    timestamps: np.ndarray
    start_index: int
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def to_frame_chunk(self) -> FrameChunk:
        import torch

        frames = torch.from_numpy(self.frames).permute(0, 3, 1, 2).contiguous()
        return FrameChunk(frames, torch.from_numpy(self.timestamps), self.start_index, self.dropped)


def _upright(array: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (counter-clockwise degrees) to ``[..., H, W, 3]`` pixels."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(array, k=k, axes=(-3, -2))) if k else array


def _fit(batch: np.ndarray, info: VideoInfo) -> np.ndarray:
    """``[T,H,W,3]`` frames from decord, scaled to the probed display size if they differ
    (decord ignores the sample aspect ratio)."""
    if batch.shape[1:3] == (info.height, info.width):
        return batch
    import torch

    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    tensor = torch.nn.functional.interpolate(tensor, size=(info.height, info.width), mode="bilinear")
    return tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _decord_upright(batch: np.ndarray, info: VideoInfo) -> np.ndarray:
    """decord's FFmpeg build applies the display rotation itself; rotate only if it did not."""
    if batch.shape[1:3] != (info.height, info.width):
        batch = _upright(batch, info.rotation)
    return _fit(batch, info)


def _to_chunk(
    arrays: list[np.ndarray], stamps: list[float], start_index: int, dropped: int = 0
) -> ArrayChunk:
    return ArrayChunk(np.stack(arrays), np.asarray(stamps, dtype=np.float64), start_index, dropped)


def stream_frames(
    path: str | os.PathLike,
    chunk_size: int = 16,
    start: float | None = None,
    end: float | None = None,
    info: VideoInfo | None = None,
    backend: str = "auto",
    check_complete: bool = True,
    stats: DecodeStats | None = None,
    high_bit_depth: bool = False,
) -> Iterator[FrameChunk]:
    """:func:`stream_arrays` as tensors: ``frames`` ``[T,3,H,W]``, ``timestamps`` ``[T]``."""
    for chunk in stream_arrays(
        path, chunk_size, start, end, info, backend, check_complete, stats, high_bit_depth
    ):
        yield chunk.to_frame_chunk()


def stream_arrays(
    path: str | os.PathLike,
    chunk_size: int = 16,
    start: float | None = None,
    end: float | None = None,
    info: VideoInfo | None = None,
    backend: str = "auto",
    check_complete: bool = True,
    stats: DecodeStats | None = None,
    high_bit_depth: bool = False,
) -> Iterator[ArrayChunk]:
    """Decode ``[start, end)`` seconds of a video in chunks of ``chunk_size`` frames
    (``[T,H,W,3]`` arrays; :func:`stream_frames` gives them as tensors).

    Frames come from the main video stream (``info.stream_index``), at the probed display size:
    anamorphic pictures are stretched to square pixels, and frames after a mid-stream
    resolution change are scaled to the first frame's size. Undecodable packets (corrupt
    data, a recording joined mid-GOP) are skipped and counted in ``ArrayChunk.dropped`` and
    ``stats.dropped``.

    Args:
        path: a local path, or a URI read by range (see :func:`spatialdreamer.video.probe.open_source`).
        check_complete: raise :class:`VideoError` at the end if the frames clearly stop short
            of the video stream's length (a truncated file), instead of ending quietly.
        backend: "auto" (PyAV, decord on failure), "pyav" or "decord".
        stats: filled in as decoding goes (frames decoded, dropped, rescaled).
        high_bit_depth: frames as ``uint16`` when the source has more than 8 bits per sample
            (``info.bit_depth``), so a 10-bit video keeps its gradations; 8-bit sources, and
            the decord fallback, give ``uint8`` whatever this says.
    """
    path = os.fspath(path)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    info = info or probe_video(path)
    stats = stats if stats is not None else DecodeStats()
    if backend in ("auto", "pyav"):
        try:
            deep = high_bit_depth and info.bit_depth > 8
            yield from _stream_pyav(path, chunk_size, start, end, info, check_complete, stats, deep)
            return
        except VideoError:
            raise
        except av.error.FFmpegError as exc:
            if backend == "pyav" or not _has_decord():
                raise VideoError(path, f"decoding failed ({_one_line(exc)})") from exc
            log.warning("PyAV failed on %s (%s); falling back to decord", path, exc)
    yield from _stream_decord(path, chunk_size, start, end, info)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# Seconds to seek back before ``start`` when a seek lands after it (MPEG-TS has no index, so
# FFmpeg's seek can land on a later keyframe); ``None``: decode from the beginning.
_SEEK_BACKOFF = (0.0, 1.0, 5.0, 30.0, None)


def _stream_pyav(path, chunk_size, start, end, info, check_complete, stats, deep) -> Iterator[ArrayChunk]:
    for back in _SEEK_BACKOFF if start else (None,):
        stats.reset()
        state = _Decode(path, chunk_size, start, end, info, stats, seek_back=back, deep=deep)
        yield from state.run()
        if not state.retry:
            break
    if state.index == 0:
        if stats.decoded == 0 and stats.rejected:
            raise VideoError(path, stats.undecodable())
        raise VideoError(path, "no frames in the requested range")
    if stats.dropped:
        log.warning("%s: %d undecodable frames dropped", path, stats.dropped)
    if stats.rescaled:
        log.warning(
            "%s: %d frames scaled to %dx%d after a resolution change",
            path,
            stats.rescaled,
            info.width,
            info.height,
        )
    whole = start is None and end is None
    if check_complete and whole and not info.is_image:
        _check_complete(path, info, stats, state.last_ts)


def _check_complete(path: str, info: VideoInfo, stats: DecodeStats, last_ts: float | None) -> None:
    """Raise if the frames clearly stop short of what the video stream promised."""
    if info.frame_count_exact:
        if stats.decoded + stats.dropped < 0.9 * info.frame_count - 1:
            raise VideoError(path, f"truncated: decoded {stats.decoded} of {info.frame_count} frames")
        return
    if last_ts is not None and info.duration and last_ts + 1.0 / info.fps < 0.9 * info.duration - 0.1:
        raise VideoError(
            path,
            f"truncated: frames end at {last_ts:.2f} s of {info.duration:.2f} s"
            + (f" ({stats.read_error})" if stats.read_error else ""),
        )


class _Decode:
    """One decoding pass; ``retry`` is set when a seek landed after ``start`` before any frame
    was handed out, so the caller tries again from further back."""

    def __init__(
        self, path, chunk_size, start, end, info: VideoInfo, stats: DecodeStats, seek_back, deep=False
    ):
        self.path, self.chunk_size, self.start, self.end = path, chunk_size, start, end
        self.info, self.stats, self.seek_back = info, stats, seek_back
        self.format = "rgb48le" if deep else "rgb24"
        self.retry = False
        self.index = 0
        self.last_ts: float | None = None
        # the output size before rotation: display size (square pixels) of the first frame
        if info.rotation in (90, 270):
            self.size = (info.height, info.width)
        else:
            self.size = (info.width, info.height)
        self.coded = (info.coded_width, info.coded_height)

    def _pixels(self, frame) -> np.ndarray:
        size = (frame.width, frame.height)
        colour = colour_of_frame(frame, self.info.width, self.info.height)
        matrix = {"src_colorspace": sws_colorspace(colour.matrix), "src_color_range": sws_range(colour)}
        if size == self.size:
            array = frame.to_ndarray(format=self.format, interpolation=_EXACT, **matrix)
        else:
            if self.coded != (0, 0) and size != self.coded:
                self.stats.rescaled += 1
            width, height = self.size
            array = frame.to_ndarray(
                format=self.format, width=width, height=height, interpolation=_BICUBIC, **matrix
            )
        return _upright(array, self.info.rotation)

    def run(self) -> Iterator[ArrayChunk]:
        info, stats, start, end = self.info, self.stats, self.start, self.end
        tolerance = 0.5 / info.fps
        t0 = info.start_time
        with open_source(self.path) as (source, options), av.open(source, **options) as container:
            stream = container.streams.get(info.stream_index)[0]
            stream.thread_type = "AUTO"
            for other in container.streams:
                if other is not stream:
                    other.discard = Discard.all
            if self.seek_back is not None:
                target = max(start - self.seek_back, 0.0) + t0
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
            arrays: list[np.ndarray] = []
            stamps: list[float] = []
            first = True
            for frame in decode_tolerant(container, stream, stats, self.path):
                ts = float(frame.pts * stream.time_base) - t0 if frame.pts is not None else None
                if ts is None:
                    ts = (
                        (self.index + len(arrays)) / info.fps
                        if start is None
                        else start + len(arrays) / info.fps
                    )
                if first and self.seek_back is not None and ts > start + tolerance:
                    self.retry = True  # the seek overshot: frames before this one were skipped
                    return
                first = False
                if start is not None and ts < start - tolerance:
                    continue
                if end is not None and ts >= end - tolerance:
                    break
                arrays.append(self._pixels(frame))
                stamps.append(ts)
                self.last_ts = ts
                if len(arrays) == self.chunk_size:
                    yield _to_chunk(arrays, stamps, self.index, stats.dropped)
                    self.index += len(arrays)
                    arrays, stamps = [], []
            if first and self.seek_back is not None and start < info.duration:
                self.retry = True  # nothing at all after the seek: try from further back
                return
            if arrays:
                yield _to_chunk(arrays, stamps, self.index, stats.dropped)
                self.index += len(arrays)


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _decord_reader(path: str):
    """A decord reader (decord opens only local files: a URI is downloaded first)."""
    import decord

    from spatialdreamer.data import storage

    with storage.local_copy(path) if "://" in path else contextlib.nullcontext(path) as local:
        try:
            reader = decord.VideoReader(local, ctx=decord.cpu(0))
        except Exception as exc:  # decord raises its own DECORDError or RuntimeError
            raise VideoError(path, f"decord cannot open it ({exc})") from exc
        yield reader


def _stream_decord(path, chunk_size, start, end, info) -> Iterator[ArrayChunk]:
    with _decord_reader(path) as reader:
        yield from _decord_chunks(reader, path, chunk_size, start, end, info)


def _decord_chunks(reader, path, chunk_size, start, end, info) -> Iterator[ArrayChunk]:
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
    """Random access: frames at ``indices`` as ``[N,3,H,W]`` uint8.

    ``backend="decord"`` is faster on long seeks but converts YUV -> RGB with FFmpeg's default
    rounding and BT.601, a few levels off :func:`stream_frames`' pixels; "auto" and "pyav"
    give exactly those."""
    import torch

    path = os.fspath(path)
    info = info or probe_video(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices is empty")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    # decord reads the stream FFmpeg calls best, ignores the sample aspect ratio and converts
    # to RGB with FFmpeg's default rounding and BT.601: only when asked for
    if _has_decord() and backend == "decord":
        with _decord_reader(path) as reader:
            if max(indices) >= len(reader):
                raise IndexError(f"frame {max(indices)} requested, video has {len(reader)} frames")
            batch = _decord_upright(reader.get_batch(indices).asnumpy(), info)
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    position = 0
    for chunk in stream_arrays(path, chunk_size=32, info=info, backend="pyav", check_complete=False):
        for j in range(len(chunk)):
            if position + j in wanted:
                found[position + j] = chunk.frames[j]
        position += len(chunk)
        if position > wanted[-1]:
            break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise IndexError(f"frame {missing[0]} requested, video has {position} frames")
    return torch.from_numpy(np.stack([found[i] for i in indices])).permute(0, 3, 1, 2).contiguous()
