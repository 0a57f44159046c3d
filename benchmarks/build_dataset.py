"""Corpus-builder throughput and memory: the Ray Data job vs the same stages in a plain loop.

    python benchmarks/build_dataset.py [--videos 6] [--seconds 2] [--size 320x192] [--config demo]

Writes N synth videos (and 4N for the memory check), then runs, each in a fresh subprocess in
its own session:

- the plain loop (``build(..., in_process=True)``) with 1 and with all torch threads;
- the Ray job on an embedded local Ray with ``num_cpus`` = the machine's cores, on N and 4N
  videos.

Throughput is clips/s and frames/s of the build itself; Ray's start-up (``ray.init``) is timed
apart, since a cluster is started once and serves many jobs. Peak memory is the peak over the
run of the summed PSS (proportional set size: shared pages such as Ray's object store counted
once) of every process in the run's session (driver, raylet, GCS, workers), sampled every
0.2 s. Prints a table of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _session_pss_mib(sid: int) -> float:
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            for line in Path(f"/proc/{name}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def _measure(args: list[str]) -> dict:
    """Run this script's child mode in a new session; returns its report plus peak PSS."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _session_pss_mib(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({process.returncode}): {' '.join(args)}")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_pss_mib"] = peak[0]
    return report


def _child(mode: str, videos: str, output: str, config_name: str, threads: int) -> None:
    import torch

    from pipelines.build_dataset import build, load_config
    from spatialdreamer.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(threads)
    config = load_config(config_name)
    startup = 0.0
    if mode == "ray":
        import ray

        began = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - began
        ray.data.DataContext.get_current().enable_progress_bars = False
    began = time.perf_counter()
    summary = build(videos, output, config, overwrite=True, in_process=mode == "plain")
    elapsed = time.perf_counter() - began
    print(
        json.dumps(
            {
                "clips": summary["clips_written"],
                "frames": summary["frames_written"],
                "seconds": elapsed,
                "startup": startup,
                "failures": summary["failures"],
            }
        )
    )


def _write_videos(folder: Path, count: int, seconds: float, size: tuple[int, int], offset: int = 0) -> None:
    import torch

    from spatialdreamer.synth import random_spec
    from spatialdreamer.synth.videos import write_scene

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(offset, offset + count):
        if not (folder / f"v{i:04d}.mp4").exists():
            spec = random_spec(1000 + i, height=h, width=w, frames=round(seconds * 24), fps=24.0)
            write_scene(spec, folder, f"v{i:04d}", audio=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=6, help="N: videos in the throughput runs")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", default="320x192")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "VIDEOS", "OUT", "CONFIG", "THREADS"))
    args = parser.parse_args()
    if args.child:
        mode, videos, out, config, threads = args.child
        _child(mode, videos, out, config, int(threads))
        return

    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as scratch:
        work = Path(args.work or scratch)
        small, large = work / "videos_n", work / "videos_4n"
        print(f"writing {args.videos} + {4 * args.videos} synth videos ({args.size}, {args.seconds} s) ...")
        _write_videos(small, args.videos, args.seconds, size)
        _write_videos(large, 4 * args.videos, args.seconds, size)
        cores = os.cpu_count() or 1
        runs = [
            ("plain loop, 1 torch thread", ["plain", str(small), str(work / "out_plain1"), args.config, "1"]),
            (
                f"plain loop, {cores} torch threads",
                ["plain", str(small), str(work / "out_plainN"), args.config, str(cores)],
            ),
            (f"Ray job, N={args.videos}", ["ray", str(small), str(work / "out_ray_n"), args.config, "1"]),
            (
                f"Ray job, 4N={4 * args.videos}",
                ["ray", str(large), str(work / "out_ray_4n"), args.config, "1"],
            ),
        ]
        results = {}
        for label, child in runs:
            report = _measure(child)
            results[label] = report
            clips, frames, seconds = report["clips"], report["frames"], report["seconds"]
            print(
                f"  {label:<32} {clips:>4} clips {frames:>5} frames in {seconds:7.1f} s"
                f"  {clips / seconds:6.2f} clips/s {frames / seconds:7.1f} frames/s"
                f"  peak PSS {report['peak_pss_mib']:7.0f} MiB"
                + (f"  (ray.init {report['startup']:.1f} s)" if report["startup"] else ""),
                flush=True,
            )
        labels = list(results)
        best_plain = max(
            results[labels[0]]["frames"] / results[labels[0]]["seconds"],
            results[labels[1]]["frames"] / results[labels[1]]["seconds"],
        )
        ray_n, ray_4n = results[labels[2]], results[labels[3]]
        ray_fps = ray_n["frames"] / ray_n["seconds"]
        ray_fps_4n = ray_4n["frames"] / ray_4n["seconds"]
        with_startup = ray_n["frames"] / (ray_n["seconds"] + ray_n["startup"])
        print(f"\nRay / best plain loop throughput, N videos:   {ray_fps / best_plain:.2f}x (target >= 0.7x)")
        print(f"Ray / best plain loop throughput, 4N videos:  {ray_fps_4n / best_plain:.2f}x")
        print(f"  same, counting Ray start-up in the N run:     {with_startup / best_plain:.2f}x")
        low, high = ray_n["peak_pss_mib"], ray_4n["peak_pss_mib"]
        print(
            f"Ray peak memory 4N / N:                        {high / low:.2f}x "
            f"({low:.0f} -> {high:.0f} MiB; target <= 1.3x)"
        )


if __name__ == "__main__":
    main()
