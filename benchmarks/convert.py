"""End-to-end conversion speed and peak memory for a short and a ten-times-longer video.

Renders one short synth scene, loops it forwards and backwards (smooth motion, no cuts) into
videos of each length with an audio track, converts each in a fresh child process
(``spatialdreamer.convert.convert_video``, the CLI's path) and prints frames/s and the child's
peak RSS. Streaming decode → depth → warp → fill → encode should keep memory flat: the
100 s video's peak should stay within 1.3x of the 10 s video's.

    python benchmarks/convert.py [--seconds 10 100] [--size 640x360] [--depth-model parallax]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _child(source: str, output: str, depth_model: str, fmt: str) -> dict:
    from spatialdreamer.convert import ConvertOptions, convert_video
    from spatialdreamer.runtime import peak_rss_mib, tune_cpu_allocator

    tune_cpu_allocator()
    began = time.perf_counter()
    report = convert_video(source, output, ConvertOptions(depth_model=depth_model, format=fmt))
    return {
        "frames": report.frames,
        "seconds": time.perf_counter() - began,  # includes model load
        "fps": report.fps,
        "peak_rss_mib": peak_rss_mib(),
    }


def _looped_video(folder: Path, seconds: float, width: int, height: int, fps: float) -> Path:
    """``seconds`` of a 2 s synth scene played forwards and backwards, with a tone as audio."""
    from spatialdreamer.synth import iter_frames, random_spec
    from spatialdreamer.synth.videos import write_tone
    from spatialdreamer.video import VideoWriter

    spec = random_spec(7, height=height, width=width, frames=round(2 * fps), fps=fps)
    frames = torch.stack([f["left"] for f in iter_frames(spec)])
    loop = torch.cat([frames, frames.flip(0)[1:-1]])
    tone = write_tone(folder / f"tone_{int(seconds)}s.wav", seconds)
    path = folder / f"src_{int(seconds)}s.mp4"
    with VideoWriter(path, fps, audio_from=tone) as writer:
        for i in range(round(seconds * fps)):
            writer.write(loop[i % len(loop)][None])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the source videos")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--depth-model", default="parallax", help="parallax, or a hub id / local path")
    parser.add_argument("--format", default="full-sbs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return

    width, height = (int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, depth {args.depth_model}")
    print(f"{'video':>8} {'frames':>7} {'frames/s':>9} {'wall s':>8} {'peak RSS MiB':>13}")
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            source = _looped_video(Path(tmp), seconds, width, height, args.fps)
            output = str(Path(tmp) / f"out_{int(seconds)}s.mp4")
            cmd = [sys.executable, __file__, "--child", str(source), output, args.depth_model, args.format]
            result = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(result.stdout.splitlines()[-1])
            peaks.append(r["peak_rss_mib"])
            print(
                f"{seconds:>7.0f}s {r['frames']:>7d} {r['fps']:>9.1f} {r['seconds']:>8.1f} "
                f"{r['peak_rss_mib']:>13.0f}"
            )
    if len(peaks) > 1:
        print(f"peak RSS ratio, longest / shortest: {peaks[-1] / peaks[0]:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
