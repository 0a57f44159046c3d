"""Accuracy and CPU cost of the weight-free ``parallax`` depth, per setting, side by side.

Scores each setting on synth scenes with exact depth (Spearman rank correlation and AbsRel
after a scale-and-shift fit, :func:`spatialdreamer.depth.evaluate_depth`; the table in
:class:`~spatialdreamer.depth.ParallaxDepthEstimator`'s docstring comes from here), then times
it on 16-frame chunks of a moving synth scene at each size, in CPU milliseconds per frame (all
threads; robust to the machine's load, unlike wall time). ``flow_gap=1`` is per-frame flow,
the estimator as it was before the gap.

    python benchmarks/depth_parallax.py [--gaps 1 2 3] [--sizes 1280x720 1920x1080]
"""

import spatialdreamer.runtime as _runtime

_runtime.configure_cpu()  # first, before torch loads

import argparse
import os
import time

import torch

from spatialdreamer.depth import ParallaxDepthEstimator, evaluate_depth, scene_prior
from spatialdreamer.synth import iter_frames, make_scene, random_spec

# (label, seeds, height, width, frames, frames skipped before scoring)
SCENE_SETS = (
    ("seeds 0-5, 96x160, 8 frames", range(6), 96, 160, 8, 1),
    ("seeds 10-15, 96x160, 16 frames", range(10, 16), 96, 160, 16, 1),
    ("seeds 20-31, 144x256, 24 frames", range(20, 32), 144, 256, 24, 2),
    ("seeds 0-5, 360x640, 8 frames", range(6), 360, 640, 8, 1),
)


def _prior(frames: torch.Tensor) -> torch.Tensor:
    return scene_prior(frames.shape[2], frames.shape[3]).expand(frames.shape[0], 1, -1, -1)


def _cpu_ms_per_frame(gap: int, width: int, height: int, chunks: int = 3) -> float:
    spec = random_spec(7, height=height, width=width, frames=16 * chunks)
    frames = torch.stack([f["left"] for f in iter_frames(spec)])
    estimator = ParallaxDepthEstimator(device="cpu", flow_gap=gap)
    estimator(frames[:16])  # warm-up: first calls allocate
    estimator.reset()
    began = time.process_time()
    for chunk in frames.split(16):
        estimator(chunk)
    return 1000 * (time.process_time() - began) / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 3], help="flow_gap settings")
    parser.add_argument("--sizes", nargs="+", default=["1280x720", "1920x1080"], help="WIDTHxHEIGHT to time")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; load average before: {load[0]:.1f} (1 min)")

    print("\naccuracy, Spearman / AbsRel (higher / lower is better)")
    print(f"{'scenes':<34} {'prior alone':>13} " + " ".join(f"{'flow_gap=' + str(g):>13}" for g in args.gaps))
    for label, seeds, height, width, frames, skip in SCENE_SETS:
        scenes = [make_scene(seed, height=height, width=width, frames=frames) for seed in seeds]
        scores = [evaluate_depth(_prior, scenes, skip=skip)]
        scores += [
            evaluate_depth(ParallaxDepthEstimator(device="cpu", flow_gap=g), scenes, skip=skip)
            for g in args.gaps
        ]
        print(
            f"{label:<34} " + " ".join(f"{s['spearman']:>6.3f} / {s['absrel']:.3f}" for s in scores),
            flush=True,
        )

    print("\nCPU ms per frame (16-frame chunks)")
    print(f"{'size':<34} {'':>13} " + " ".join(f"{'flow_gap=' + str(g):>13}" for g in args.gaps))
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        times = [_cpu_ms_per_frame(g, width, height) for g in args.gaps]
        print(f"{size:<34} {'':>13} " + " ".join(f"{t:>13.1f}" for t in times), flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
