"""What exact colour costs when decoding: YUV -> RGB with per-pixel chroma and rounding to
nearest (what ``stream_frames`` does) against swscale's default path, side by side.

    python benchmarks/decode_colour.py --size 1280x720 --frames 96

Prints frames/s for both and the mean error of each on 75 % colour bars (levels of 255).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation

import spatialdreamer.video.reader as reader
from spatialdreamer.video import stream_frames

_BARS = np.array(
    [[191, 191, 191], [191, 191, 0], [0, 191, 191], [0, 191, 0], [191, 0, 191], [191, 0, 0], [0, 0, 191]],
    dtype=np.uint8,
)


def _clip(path: Path, width: int, height: int, frames: int) -> np.ndarray:
    bars = np.ascontiguousarray(
        np.broadcast_to(_BARS[np.arange(width) * 7 // width][None], (height, width, 3))
    )
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1
        ctx.color_range = int(ColorRange.MPEG)
        for i in range(frames):
            picture = bars.copy()
            picture[height // 2 :] = rng.integers(0, 255, (height - height // 2, width, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return bars


def _run(path: Path, bars: np.ndarray) -> tuple[float, float]:
    began = time.perf_counter()
    count, first = 0, None
    for chunk in stream_frames(path, 16):
        count += len(chunk)
        first = chunk.frames[0] if first is None else first
    fps = count / (time.perf_counter() - began)
    top = first.permute(1, 2, 0).numpy()[: bars.shape[0] // 4].astype(np.float64)
    return fps, float(np.abs(top - bars[: bars.shape[0] // 4]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=96)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bars.mp4"
        bars = _clip(path, width, height, args.frames)
        accurate = reader._EXACT
        for name, flags in (("swscale default", Interpolation.BILINEAR), ("exact (default)", accurate)) * 2:
            reader._EXACT = flags
            fps, error = _run(path, bars)
            print(f"{name:16s} {args.size}: {fps:6.1f} frames/s decoded to RGB, bars off by {error:.2f}/255")
        reader._EXACT = accurate


if __name__ == "__main__":
    main()
