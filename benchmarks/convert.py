"""End-to-end conversion speed, per-stage profile and peak memory, with and without a competing load.

Renders one short synth scene, loops it forwards and backwards (smooth motion, no cuts) into a
video of each size and length with an audio track, converts each in a fresh child process
(``spatialdreamer.convert.convert_video``, the CLI's path) and prints frames/s, the child's
CPU seconds per frame, its peak RSS and the busy time of each stage per frame (the stages run
overlapped, so the slowest one bounds the frame rate). Each child first loads the compiled
kernels (a one-time cost per process, printed; not in frames/s). ``--loads 0 1`` repeats every
run with one busy process spinning on a core beside it. ``--baseline DIR`` converts the same
videos with another checkout's code (``DIR`` on ``PYTHONPATH``, with that code's own thread
policy) for a before/after comparison in the same run. With two lengths, streaming should keep
memory flat: the longer video's peak within 1.3x the shorter's.

The per-stage profile (on by default, ``--no-profile`` skips it) runs the same steps one after
another in a fresh child and prints each step's CPU milliseconds per frame (all of the
process's threads). CPU time hardly moves with the machine's load, where the overlapped busy
times do: this is the table to compare code by, and its total over the cores bounds frames/s.

    python benchmarks/convert.py [--sizes 1280x720 1920x1080] [--seconds 10] [--loads 0 1]
"""

import spatialdreamer.runtime as _runtime

if hasattr(_runtime, "configure_cpu"):  # absent in a --baseline checkout from before it existed
    _runtime.configure_cpu()  # first, before torch loads

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGES = ("decode", "cuts", "depth", "warp", "fill", "compose", "encode")
# the serial profile splits "depth" into the model, the shot normalisation and the disparity map
STEPS = (
    "decode",
    "cuts",
    "to float",
    "depth",
    "normalise",
    "plan",
    "stabilise",
    "render",
    "compose",
    "encode",
)
# a core's worth of competing load, which ends with the benchmark even when that is killed
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"


def _child(source: str, output: str, depth_model: str, fmt: str, eye: str) -> dict:
    from spatialdreamer.convert import ConvertOptions, convert_video
    from spatialdreamer.runtime import peak_rss_mib, tune_cpu_allocator

    tune_cpu_allocator()
    warm = time.perf_counter()
    try:  # load the compiled kernels once (a one-time cost per process, ~1-3 s), outside the timing
        from spatialdreamer.dvg import forward_warp
        from spatialdreamer.stereo import fill_holes

        tiny = forward_warp(torch.rand(1, 3, 8, 32), torch.full((1, 1, 8, 32), 3.0))
        fill_holes(tiny.image, tiny.holes, tiny.disparity)
        from spatialdreamer.convert import render_layout
        from spatialdreamer.stereo.render import StereoRenderer

        frame = torch.rand(1, 3, 8, 32)
        render_layout(StereoRenderer(), (frame * 255).byte(), frame, torch.full((1, 1, 8, 32), 3.0), fmt)
    except ImportError:
        pass
    startup = time.perf_counter() - warm
    began = time.perf_counter()
    cpu_began = time.process_time()
    # "both" is the default; code from before --eye (a baseline) synthesizes the right eye
    extra = {} if eye == "both" else {"eye": eye}
    report = convert_video(source, output, ConvertOptions(depth_model=depth_model, format=fmt, **extra))
    return {
        "frames": report.frames,
        "wall_seconds": time.perf_counter() - began,  # includes model load
        "cpu_seconds": time.process_time() - cpu_began,
        "fps": report.fps,
        "kernel_load_seconds": startup,
        "peak_rss_mib": peak_rss_mib(),
        "stages": getattr(report, "stage_seconds", {}),
        "threads": torch.get_num_threads(),
    }


def _profile_child(source: str, output: str, depth_model: str, fmt: str, eye: str) -> dict:
    """CPU seconds of each step of a conversion, run one after another (as ``convert_video``
    does them, with its default options: steady depth, edge dilation, ``eye``)."""
    from spatialdreamer.convert import ConvertOptions, pack_eyes

    try:
        from spatialdreamer.convert import render_layout
    except ImportError:  # a --baseline checkout from before it
        render_layout = None
    from spatialdreamer.depth import TemporalNormalizer, load_depth_estimator
    from spatialdreamer.stereo import ComfortBound, ConvergencePlanner, DepthStabilizer
    from spatialdreamer.stereo.render import StereoRenderer
    from spatialdreamer.video import VideoWriter, stream_frames
    from spatialdreamer.video.shots import CutDetector

    options = ConvertOptions(depth_model=depth_model, format=fmt, eye=eye)
    renderer = StereoRenderer(options.eye, options.edge_dilation, options.inpaint)
    renderer(torch.rand(1, 3, 8, 32), torch.full((1, 1, 8, 32), 3.0))  # compiled kernels loaded untimed
    estimator = load_depth_estimator(depth_model, device="cpu")
    normalizer, cuts = TemporalNormalizer(), CutDetector()
    stabilizer = DepthStabilizer(options.smoothing)
    planner = ConvergencePlanner(
        options.budget,
        float(options.convergence),
        ComfortBound(*options.comfort),
        lookahead=options.lookahead,
    )
    cpu = dict.fromkeys(STEPS, 0.0)

    def step(name, fn, *args):
        began = time.process_time()
        result = fn(*args)
        cpu[name] += time.process_time() - began
        return result

    frames = 0
    chunks = stream_frames(source, options.chunk_size)
    writer = VideoWriter(output, 24.0, codec="h264", crf=options.crf, preset=options.preset)
    while (chunk := step("decode", next, chunks, None)) is not None:
        if step("cuts", cuts, chunk.frames)[0]:
            for stage in (estimator, normalizer, stabilizer, planner):
                stage.reset()
        image = step("to float", lambda c=chunk: c.frames.float().div_(255.0))
        inverse = step("depth", estimator, image)
        normalized = step("normalise", normalizer, inverse)
        disparity = step("plan", planner, normalized)
        disparity = step("stabilise", stabilizer, image, disparity)
        packed = None
        if render_layout is not None:  # straight into the output frames (warp, fill, layout)
            packed = step("render", render_layout, renderer, chunk.frames, image, disparity, fmt)
        if packed is None:
            left, right = step("render", renderer, image, disparity)  # dilation, warp, fill
            packed = step("compose", pack_eyes, chunk.frames, left, right, fmt)
        step("encode", writer.write, packed)
        frames += len(chunk.frames)
    step("encode", writer.close)  # the encoder's buffered frames
    return {"frames": frames, "cpu": cpu, "threads": torch.get_num_threads()}


def _looped_video(folder: Path, seconds: float, width: int, height: int, fps: float) -> Path:
    """``seconds`` of a 2 s synth scene played forwards and backwards, with a tone as audio."""
    from spatialdreamer.synth import iter_frames, random_spec
    from spatialdreamer.synth.videos import write_tone
    from spatialdreamer.video import VideoWriter

    spec = random_spec(7, height=height, width=width, frames=round(2 * fps), fps=fps)
    frames = torch.stack([f["left"] for f in iter_frames(spec)])
    loop = torch.cat([frames, frames.flip(0)[1:-1]])
    tone = write_tone(folder / f"tone_{int(seconds)}s.wav", seconds)
    path = folder / f"src_{width}x{height}_{int(seconds)}s.mp4"
    with VideoWriter(path, fps, audio_from=tone) as writer:
        for i in range(round(seconds * fps)):
            writer.write(loop[i % len(loop)][None])
    return path


def _run(cmd: list[str], env: dict, busy: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(result.stdout.splitlines()[-1])


def _print_row(r: dict) -> None:
    line = f"{r['size']:>9} {r['seconds']:>5.0f}s {r['busy']:>4} {r['code']:>13} {r['fps']:>8.1f} "
    line += f"{r['cpu_seconds'] / max(1, r['frames']):>7.3f} {r['peak_rss_mib']:>7.0f}"
    if r["stages"]:
        per_frame = [1000 * r["stages"].get(s, 0.0) / max(1, r["frames"]) for s in STAGES]
        line += "                      " + " ".join(f"{v:>7.1f}" for v in per_frame)
        line += f"   {r.get('kernel_load_seconds', 0.0):>6.1f}"
    print(line, flush=True)


def _print_profiles(profiles: list[dict]) -> None:
    cores = os.cpu_count() or 1
    head = " ".join(f"{s:>9}" for s in STEPS)
    print(
        f"\nserial profile, CPU ms/frame\n{'size':>9} {'load':>4} {'code':>13} {head}     total", flush=True
    )
    for r in profiles:
        per_frame = [1000 * r["cpu"][s] / max(1, r["frames"]) for s in STEPS]
        total = sum(per_frame)
        line = f"{r['size']:>9} {r['busy']:>4} {r['code']:>13} " + " ".join(f"{v:>9.1f}" for v in per_frame)
        print(f"{line} {total:>9.1f}  (all {cores} cores busy: {1000 * cores / total:.1f} frames/s at most)")
    for size in dict.fromkeys(r["size"] for r in profiles):
        for code in dict.fromkeys(r["code"] for r in profiles):
            mine = [r for r in profiles if (r["size"], r["code"]) == (size, code)]
            totals = [sum(r["cpu"].values()) / r["frames"] for r in mine]
            if len(totals) > 1:
                ratio = max(totals) / min(totals)
                print(f"{size} {code}: CPU per frame, most / least across loads: {ratio:.2f} (target <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["1280x720", "1920x1080"], help="WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0])
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--depth-model", default="parallax", help="parallax, or a hub id / local path")
    parser.add_argument("--format", default="full-sbs")
    parser.add_argument("--eye", default="both", choices=("both", "right", "left"), help="eyes synthesized")
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1], help="busy processes beside the run")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout to convert with, for comparison")
    parser.add_argument("--no-profile", action="store_true", help="skip the serial per-step CPU profile")
    parser.add_argument("--source", metavar="VIDEO", help="convert this video instead of synth ones")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each code, interleaved")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    if args.child_profile:
        print(json.dumps(_profile_child(*args.child_profile)))
        return

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, depth {args.depth_model}, {args.format}, "
        f"eye {args.eye}; "
        f"load average before: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)"
    )
    # each child imports the code of its checkout, whatever is installed
    codes = {"this checkout": str(Path(__file__).resolve().parents[1])}
    codes |= {"baseline": args.baseline} if args.baseline else {}
    head = " ".join(f"{s:>7}" for s in STAGES)
    print(
        f"\n{'size':>9} {'video':>6} {'load':>4} {'code':>13} {'frames/s':>8} {'CPU s/f':>7} {'RSS MiB':>7}",
        end="",
    )
    print(f"   ms/frame per stage: {head}   kernel load s", flush=True)
    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.source:
            from spatialdreamer.video import probe_video

            info = probe_video(args.source)
            args.sizes, args.seconds = [f"{info.width}x{info.height}"], [info.duration]
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            for seconds in args.seconds:
                source = args.source or _looped_video(Path(tmp), seconds, width, height, args.fps)
                for busy in args.loads:
                    for repeat in range(args.repeat):
                        for code, root in codes.items():
                            env = dict(os.environ)
                            env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
                            output = str(Path(tmp) / f"out_{len(rows)}.mp4")
                            tail = [str(source), output, args.depth_model, args.format, args.eye]
                            r = _run([sys.executable, __file__, "--child", *tail], env, busy)
                            key = {"size": size, "seconds": seconds, "busy": busy, "code": code}
                            rows.append(key | r)
                            _print_row(rows[-1])
                            if not args.no_profile and seconds == args.seconds[0] and repeat == 0:
                                p = _run([sys.executable, __file__, "--child-profile", *tail], env, busy)
                                profiles.append(key | p)
                            Path(output).unlink(missing_ok=True)
    if profiles:
        _print_profiles(profiles)
    for size in args.sizes:
        for code in codes:
            mine = [r for r in rows if r["size"] == size and r["code"] == code]
            by_load = {b: [r["fps"] for r in mine if r["busy"] == b] for b in args.loads}
            if len(args.loads) > 1 and all(by_load.values()):
                worst = min(min(v) for v in by_load.values()) / max(max(v) for v in by_load.values())
                print(f"{size} {code}: frames/s with load / without: {worst:.2f} (target >= 0.5)")
            if len(args.seconds) > 1:
                peaks = [r["peak_rss_mib"] for r in mine if r["busy"] == args.loads[0]]
                ratio = peaks[-1] / peaks[0]
                print(f"{size} {code}: peak RSS, longest / shortest video: {ratio:.2f} (target <= 1.3)")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)")


if __name__ == "__main__":
    main()
