"""Video encoding: visually lossless H.264/H.265/VP9 with the source's audio, correct
colour tags, and a lossless FFV1 path for depth and masks.

Everything is written under a temporary name in the destination folder and renamed only when
complete, so an interrupted or failed job never leaves a partial file behind. RGB becomes YUV
with the matrix of :class:`~spatialdreamer.video.colour.Colour` (BT.709 for HD, BT.601 for SD
unless the source says otherwise), and the file is tagged with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import Interpolation

from spatialdreamer.video.colour import Colour, standard_colour, sws_colorspace, sws_range
from spatialdreamer.video.errors import VideoError
from spatialdreamer.video.streams import main_video_stream

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONTAINER_CODECS",
    "finish_with_audio",
    "leftover_temporaries",
    "VideoWriter",
    "check_output",
    "default_codec",
    "fit_file_name",
    "format_bits",
    "peak_value",
    "quantize",
    "read_lossless",
    "sibling_path",
    "write_lossless",
]

log = logging.getLogger(__name__)

_CODECS = {
    "h264": "libx264",
    "h265": "libx265",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
    "mpeg4": "mpeg4",
    "ffv1": "ffv1",
}
_ALL = frozenset(_CODECS)
#: output suffix -> the codecs its container holds
CONTAINER_CODECS = {
    ".mp4": frozenset({"h264", "h265", "hevc", "vp9", "mpeg4"}),
    ".mkv": _ALL,
    ".mov": frozenset({"h264", "h265", "hevc", "mpeg4"}),
    ".webm": frozenset({"vp9"}),
    ".avi": frozenset({"h264", "mpeg4", "ffv1"}),
}
_VFR_TIME_BASE = Fraction(1, 90000)
# MPEG-4 Part 2 caps the clock at 65535 ticks/s; 60000 still times 23.976-60 fps exactly
_VFR_TIME_BASES = {"mpeg4": Fraction(1, 60000)}
# longest file name most file systems take, in bytes
_NAME_MAX = 255
_QUALITY_CODECS = ("h264", "h265", "hevc")


def default_codec(suffix: str) -> str:
    """The codec a bare output suffix implies: VP9 for WebM, MPEG-4 Part 2 for AVI, else H.264."""
    return {".webm": "vp9", ".avi": "mpeg4"}.get(suffix.lower(), "h264")


def check_output(path: str | os.PathLike, codec: str, pix_fmt: str | None = None) -> None:
    """Raise ``ValueError`` (one line) if ``path``'s container cannot hold ``codec``, the
    encoder is missing from this FFmpeg, or it cannot encode ``pix_fmt``."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINER_CODECS:
        known = "/".join(CONTAINER_CODECS)
        raise ValueError(f"output {Path(path).name}: unknown video container {suffix!r}; use {known}")
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {', '.join(sorted(_CODECS))}, got {codec!r}")
    if codec not in CONTAINER_CODECS[suffix]:
        fits = ", ".join(sorted(CONTAINER_CODECS[suffix] - {"hevc"}))
        raise ValueError(f"a {suffix} file cannot hold {codec} video; use --codec {fits} or another suffix")
    encoder = _CODECS[codec]
    if encoder not in av.codecs_available:
        raise ValueError(f"this FFmpeg build has no {encoder} encoder for {codec}; choose another codec")
    if pix_fmt is not None:
        formats = [f.name for f in av.codec.Codec(encoder, "w").video_formats or []]
        if formats and pix_fmt not in formats:
            raise ValueError(f"{codec} cannot encode {pix_fmt}; it takes {', '.join(formats)}")


def sibling_path(path: str | os.PathLike, label: str) -> Path:
    """A hidden name next to ``path`` for its temporary files (``.<name>.<label>``), kept
    within the file-name length limit: long names are cut (on a UTF-8 character boundary) and
    keep a hash of the whole name, so two long names never share a temporary file."""
    path = Path(path)
    name = f".{path.stem}.{label}{path.suffix}"
    if len(name.encode()) <= _NAME_MAX:
        return path.with_name(name)
    digest = hashlib.sha1(path.name.encode()).hexdigest()[:12]
    room = _NAME_MAX - len(f".~{digest}.{label}{path.suffix}".encode())
    stem = path.stem.encode()[:room].decode("utf-8", errors="ignore")
    return path.with_name(f".{stem}~{digest}.{label}{path.suffix}")


def fit_file_name(stem: str, tail: str) -> str:
    """``stem + tail`` within the file-name length limit (255 bytes): a long stem is cut on a
    UTF-8 character boundary and ends with ``~`` and a hash of the whole stem, so two long
    names that share their beginning still differ.

    Example:
        >>> len(fit_file_name("é" * 120, "_LRF_Full_SBS.mp4").encode()) <= 255
        True
    """
    name = f"{stem}{tail}"
    if len(name.encode()) <= _NAME_MAX:
        return name
    digest = hashlib.sha1(stem.encode()).hexdigest()[:8]
    room = _NAME_MAX - len(f"~{digest}{tail}".encode())
    return f"{stem.encode()[:room].decode('utf-8', errors='ignore')}~{digest}{tail}"


def _temp_path(path: Path) -> Path:
    return sibling_path(path, "partial")


_PEAKS = {"uint8": 255.0, "uint16": 65535.0}


def peak_value(dtype) -> float | None:
    """The value of white in integer RGB frames of ``dtype`` (torch or numpy): 255 for 8 bits,
    65535 for 16 (sources of more than 8 bits); None for float frames (in [0, 1])."""
    return _PEAKS.get(str(dtype).removeprefix("torch."))


def format_bits(pix_fmt: str) -> int:
    """Bits per sample of a pixel format (10 for ``yuv420p10le``)."""
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def quantize(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float frames in [0, 1] to the integer ``dtype`` (uint8 or uint16), rounded to nearest."""
    return frames.detach().float().clamp(0.0, 1.0).mul_(peak_value(dtype)).add_(0.5).to(dtype)


def _rgb_pixels(frames: torch.Tensor, deep: bool) -> np.ndarray:
    """``[T,H,W,3]`` uint8, or uint16 where the frames carry more than 8 bits: ``uint16``
    frames as they are, float frames when the pixel format has more than 8 bits (``deep``)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T,3,H,W] RGB, got {tuple(frames.shape)}")
    if peak_value(frames.dtype) is None:
        import torch

        frames = quantize(frames, torch.uint16 if deep else torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _encoder_options(
    codec: str, crf: int, preset: str, verbose: bool, b_frames: int | None
) -> dict[str, str]:
    """Constant-quality settings per encoder; encoder chatter only with ``-v``; ``b_frames``
    None = the preset's (H.264/H.265 only)."""
    if codec == "h264":
        return {"crf": str(crf), "preset": preset} | (
            {} if b_frames is None else {"x264-params": f"bframes={b_frames}"}
        )
    if codec in ("h265", "hevc"):
        # without B-pyramid: x265's decode times for a 2-frame clip are ones FFmpeg's MP4
        # muxer refuses ("pts/dts pair unsupported"); a little less compression
        level = "info" if verbose else "error"
        params = f"log-level={level}:b-pyramid=0" + ("" if b_frames is None else f":bframes={b_frames}")
        return {"crf": str(crf), "preset": preset, "x265-params": params}
    fast = preset in ("ultrafast", "superfast", "veryfast", "faster", "fast")
    if codec == "vp9":
        speed = {"deadline": "realtime", "cpu-used": "8"} if fast else {"deadline": "good", "cpu-used": "2"}
        return {"crf": str(crf + 14), "b": "0", "row-mt": "1", **speed}
    if codec == "mpeg4":
        return {"qmin": "1", "qmax": "3"}
    return {}


class VideoWriter:
    """Encode frames chunk by chunk; call :meth:`close` (or use ``with``) to finish.

    Args:
        path: output file; its suffix picks the container (see :data:`CONTAINER_CODECS`).
        fps: nominal frame rate.
        codec: "h264", "h265", "vp9", "mpeg4" or "ffv1" (lossless RGB).
        crf: quality for H.264/H.265 (16-18 is visually lossless); VP9 gets the equivalent.
        pix_fmt: ``yuv420p`` (default), ``yuv420p10le`` (10 bits), ``yuv444p`` (no chroma
            subsampling), ... whatever the encoder takes.
        colour: the RGB->YUV matrix, range and the tags written; default: BT.709 for HD frames,
            BT.601 for SD (:func:`~spatialdreamer.video.colour.standard_colour` of the frame size).
        audio_from: a video whose first audio stream is copied into the output.
        audio_range: ``(start, end)`` seconds of that audio to keep (``end`` may be None).
        b_frames: most B-frames in a row for H.264/H.265 (None: the preset's). B-frames are
            coded at a coarser quality than the frames around them, so still parts of the
            picture pulse from frame to frame; 0 keeps them steady, at some size on fast motion.

    Frames are ``[T,3,H,W]`` uint8, uint16 (0–65535) or float in [0, 1]; float frames keep
    more than 8 bits when ``pix_fmt`` has them. 4:2:0 codecs need even sizes: odd
    widths/heights are padded by repeating the last column/row. Passing ``timestamps``
    (seconds) to :meth:`write` keeps a variable frame rate.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        *,
        codec: str = "h264",
        crf: int = 17,
        preset: str = "medium",
        pix_fmt: str | None = None,
        colour: Colour | None = None,
        audio_from: str | os.PathLike | None = None,
        audio_range: tuple[float, float | None] = (0.0, None),
        b_frames: int | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if codec not in _CODECS:
            raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
        self.path = Path(path)
        self.pix_fmt = pix_fmt or ("bgr0" if codec == "ffv1" else "yuv420p")
        check_output(self.path, codec, self.pix_fmt)
        self.fps = float(fps)
        self.codec = codec
        self.crf = int(crf)
        self.preset = preset
        self.colour = colour
        self.audio_from = os.fspath(audio_from) if audio_from is not None else None
        self.audio_range = audio_range
        self.b_frames = b_frames
        self.frames_written = 0
        self._tmp_video = sibling_path(self.path, "video-only")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._vfr = False
        self._yuv = self.pix_fmt.startswith("yuv")
        self._deep = format_bits(self.pix_fmt) > 8

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, height: int, width: int, variable_rate: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        verbose = log.isEnabledFor(logging.INFO)
        self._container = av.open(str(self._tmp_video), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001 * 1000)
        stream = self._container.add_stream(_CODECS[self.codec], rate=rate)
        subsampled = self.pix_fmt.startswith(("yuv420", "yuvj420", "yuv422", "yuvj422"))
        stream.width = width + (width % 2 if subsampled else 0)
        stream.height = height + (height % 2 if subsampled and "420" in self.pix_fmt else 0)
        stream.pix_fmt = self.pix_fmt
        stream.options = _encoder_options(self.codec, self.crf, self.preset, verbose, self.b_frames)
        if self.codec in ("h265", "hevc") and self.path.suffix.lower() in (".mp4", ".mov"):
            stream.codec_tag = "hvc1"  # Apple players (Vision Pro included) refuse hev1
        if self._yuv:
            if self.colour is None:
                self.colour = standard_colour(width, height)
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_primaries = self.colour.matrix, self.colour.primaries
            ctx.color_trc, ctx.color_range = self.colour.transfer, int(sws_range(self.colour))
        self._vfr = variable_rate
        self._vfr_time_base = _VFR_TIME_BASES.get(self.codec, _VFR_TIME_BASE)
        stream.codec_context.time_base = self._vfr_time_base if variable_rate else 1 / rate
        self._stream = stream
        self._size = (height, width)

    def _yuv_frame(self, rgb: np.ndarray) -> av.VideoFrame:
        deep = rgb.dtype == np.uint16
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if deep else "rgb24")
        if not self._yuv:
            return frame
        colour = self.colour
        # swscale's accurate rounding only for more than 8 bits in: from 8-bit RGB it changes
        # chroma by at most one level (luma not at all) and costs a third more (2560x720:
        # 10.6 against 6.8 ms per frame)
        frame = frame.reformat(
            format=self.pix_fmt,
            dst_colorspace=sws_colorspace(colour.matrix),
            dst_color_range=sws_range(colour),
            interpolation=Interpolation.BILINEAR | (Interpolation.ACCURATE_RND if deep else 0),
        )
        frame.colorspace, frame.color_range = colour.matrix, int(sws_range(colour))
        frame.color_primaries, frame.color_trc = colour.primaries, colour.transfer
        return frame

    def write(self, frames: torch.Tensor, timestamps: torch.Tensor | None = None) -> None:
        """Append ``frames`` ``[T,3,H,W]``; ``timestamps`` ``[T]`` seconds keep a variable rate."""
        pixels = _rgb_pixels(frames, self._deep)
        t, h, w, _ = pixels.shape
        if self._container is None:
            if h < 2 or w < 2:
                raise ValueError(f"frames must be at least 2x2, got {w}x{h}")
            self._open(h, w, timestamps is not None)
        elif (h, w) != self._size:
            raise ValueError(f"frame size changed from {self._size[1]}x{self._size[0]} to {w}x{h}")
        stream = self._stream
        pad_h, pad_w = stream.height - h, stream.width - w
        if pad_h or pad_w:
            pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for i in range(t):
            frame = self._yuv_frame(pixels[i])
            if self._vfr:
                if timestamps is None:
                    raise ValueError("this writer was started with timestamps; pass them for every chunk")
                frame.pts = round(float(timestamps[i]) / self._vfr_time_base)
            else:
                frame.pts = self.frames_written + i
            frame.time_base = stream.codec_context.time_base
            self._container.mux(stream.encode(frame))
        self.frames_written += t

    def abort(self) -> None:
        """Drop everything written so far; the destination is left untouched."""
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError):  # already failing; keep the first error
                self._container.close()
            self._container = None
        for tmp in (self._tmp_video, _temp_path(self.path)):
            tmp.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish encoding, add the audio, and move the file into place."""
        if self._container is None:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            finish_with_audio(self._tmp_video, self.path, self.audio_from, self.audio_range)
        except BaseException:
            self.abort()
            raise
        return self.path


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files a killed writer of ``path`` may have left (SIGKILL runs no cleanup)."""
    return [p for p in (sibling_path(path, "video-only"), _temp_path(Path(path))) if p.exists()]


def finish_with_audio(video_only: Path, path: Path, audio_from: str | None, audio_range=(0.0, None)) -> Path:
    """Add ``audio_from``'s audio (if any) to the finished ``video_only`` file and move the
    result to ``path`` atomically; ``video_only`` is consumed."""
    source = video_only
    try:
        if audio_from is not None and _has_audio(audio_from):
            source = _temp_path(path)
            _mux_with_audio(video_only, audio_from, source, audio_range)
            video_only.unlink(missing_ok=True)
        os.replace(source, path)
    except BaseException:
        for tmp in (video_only, _temp_path(path)):
            tmp.unlink(missing_ok=True)
        raise
    return path


def _has_audio(path: str) -> bool:
    try:
        with av.open(path) as container:
            return bool(container.streams.audio)
    except av.error.FFmpegError:
        return False


def _video_items(vin):
    for packet in vin.demux(vin.streams.video[0]):
        if packet.dts is not None:
            yield float(packet.dts * packet.time_base), 0, packet


def _copied_audio(ain, a_in, lo: float, hi: float | None):
    """Audio packets within ``[lo, hi)`` seconds of the source, shifted to start at 0."""
    shift = round(lo / a_in.time_base)
    for packet in ain.demux(a_in):
        if packet.dts is None or packet.pts is None:
            continue
        seconds = float(packet.pts * a_in.time_base)
        if seconds < lo - 1e-3:
            continue
        if hi is not None and seconds >= hi:
            break
        packet.pts -= shift
        packet.dts -= shift
        yield seconds - lo, 1, packet


def _encoded_audio(ain, a_in, a_out, lo: float, hi: float | None):
    """The same span decoded and re-encoded with ``a_out``'s codec (AAC)."""
    rate = a_out.codec_context.sample_rate
    for frame in ain.decode(a_in):
        if frame.pts is None:
            continue
        seconds = float(frame.pts * a_in.time_base)
        if seconds < lo - 1e-3:
            continue
        if hi is not None and seconds >= hi:
            break
        frame.pts = round((seconds - lo) * rate)
        frame.time_base = Fraction(1, rate)
        for packet in a_out.encode(frame):
            yield float(packet.pts * packet.time_base), 1, packet
    for packet in a_out.encode(None):
        yield float(packet.pts * packet.time_base), 1, packet


def _video_origin(container, audio) -> float:
    """Where the source's time 0 is (the main video stream's start, on which the frames'
    timestamps are based), so audio that starts later than the picture stays in sync."""
    video, _ = main_video_stream(container)
    stream = video if video is not None and video.start_time is not None else audio
    return float(stream.start_time * stream.time_base) if stream.start_time else 0.0


def _remux(video_path: Path, audio_path: str, out_path: Path, audio_range, transcode: bool) -> None:
    start, end = audio_range
    with av.open(str(video_path)) as vin, av.open(audio_path) as ain, av.open(str(out_path), mode="w") as out:
        a_in = ain.streams.audio[0]
        t0 = _video_origin(ain, a_in)
        lo, hi = t0 + (start or 0.0), (t0 + end) if end is not None else None
        v_out = out.add_stream_from_template(vin.streams.video[0])
        if transcode:
            codec = "libopus" if out_path.suffix.lower() == ".webm" else "aac"
            a_out = out.add_stream(
                codec, rate=48000 if codec == "libopus" else a_in.codec_context.sample_rate or 48000
            )
            channels = a_in.codec_context.channels or 2
            a_out.layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, "stereo")
        else:
            a_out = out.add_stream_from_template(a_in)
        if lo > 0:
            ain.seek(int(lo / a_in.time_base), stream=a_in, backward=True)
        audio = _encoded_audio(ain, a_in, a_out, lo, hi) if transcode else _copied_audio(ain, a_in, lo, hi)
        for _, kind, packet in heapq.merge(_video_items(vin), audio, key=lambda item: (item[0], item[1])):
            packet.stream = v_out if kind == 0 else a_out
            out.mux(packet)


def _mux_with_audio(video_path: Path, audio_path: str, out_path: Path, audio_range) -> None:
    """Copy the source audio next to the encoded video; re-encode it (AAC, Opus for WebM)
    only if the output container cannot hold its codec (e.g. PCM in MP4)."""
    try:
        _remux(video_path, audio_path, out_path, audio_range, transcode=False)
    except (av.error.FFmpegError, ValueError) as exc:
        log.info("audio cannot be copied into %s (%s); re-encoding it", out_path.name, exc)
        out_path.unlink(missing_ok=True)
        _remux(video_path, audio_path, out_path, audio_range, transcode=True)


def write_lossless(path: str | os.PathLike, frames: np.ndarray | torch.Tensor, fps: float = 24.0) -> Path:
    """Store single-channel frames bit-exactly (FFV1 in Matroska).

    ``frames`` ``[T,H,W]``: bool (masks, stored as 0/255 gray), uint8 (gray) or uint16
    (gray16le, e.g. disparity in 1/64 px). Read back with :func:`read_lossless`.
    """
    array = np.asarray(frames) if isinstance(frames, np.ndarray) else np.asarray(frames.cpu())
    if array.ndim != 3:
        raise ValueError(f"frames must be [T,H,W], got shape {array.shape}")
    if array.dtype == np.bool_:
        array, fmt = array.astype(np.uint8) * 255, "gray"
    elif array.dtype == np.uint8:
        fmt = "gray"
    elif array.dtype == np.uint16:
        fmt = "gray16le"
    else:
        raise TypeError(f"frames must be bool, uint8 or uint16, got {array.dtype}")
    path = Path(path)
    if path.suffix != ".mkv":
        raise ValueError(f"lossless video goes into .mkv, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001 * 1000))
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = fmt
            for i, plane in enumerate(array):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(plane), format=fmt)
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_lossless(path: str | os.PathLike) -> np.ndarray:
    """Frames written by :func:`write_lossless` as ``[T,H,W]`` uint8 or uint16."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fmt = "gray16le" if stream.codec_context.pix_fmt == "gray16le" else "gray"
            planes = [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a readable lossless video ({exc})") from exc
    if not planes:
        raise VideoError(path, "lossless video has zero frames")
    return np.stack(planes)
