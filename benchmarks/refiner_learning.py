"""Does training teach the refiner? Hole-region quality on held-out scenes, before and after.

    python benchmarks/refiner_learning.py [--work DIR] [--minutes 15] [--steps 10]

1. Builds a small corpus with the corpus job (``pipelines.build_dataset``, config ``tiny``,
   weight-free ``parallax`` depth) from synth videos.
2. Trains the ``tiny`` models for a fixed CPU-time budget, split between the paper's two stages:
   ``frames`` (single frames, temporal layers frozen), then ``video`` (4-frame windows, starting
   from the frames stage's EMA weights). Exports the EMA pipeline.
3. Scores the right views of held-out benchmark scenes (other seeds, true disparity, ray-cast
   ground truth) in the disocclusions only — PSNR and SSIM over hole pixels — for:

   * untrained: the same architecture, randomly initialised, in the same calibrated latent space;
   * trained: the exported pipeline (EMA weights), ``--steps`` denoising steps, and one step;
   * classical fill: the converter's default (background propagation + inpainting);
   * copy-left: the left view's pixels in the holes (the do-nothing reference);
   * VAE ceiling: the true right view through the latent space (what a perfect denoiser
     could reach; the tiny config's space-to-depth autoencoder is lossless).

Prints a Markdown table and writes ``WORK/results.json``. Timings vary with machine load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spatialdreamer.data.dataset import StereoClipDataset  # noqa: E402
from spatialdreamer.dvg import forward_warp  # noqa: E402
from spatialdreamer.eval.benchmark import BenchmarkConfig, ensure_benchmark, load_scene  # noqa: E402
from spatialdreamer.metrics import psnr, ssim  # noqa: E402
from spatialdreamer.models import SpatialDreamerPipeline, build_pipeline  # noqa: E402
from spatialdreamer.models.autoencoder import calibrate_latent_scale  # noqa: E402
from spatialdreamer.models.conditioning import decode_latents, encode_frames  # noqa: E402
from spatialdreamer.runtime import tune_cpu_allocator  # noqa: E402
from spatialdreamer.stereo import fill_holes  # noqa: E402
from spatialdreamer.synth import random_spec  # noqa: E402
from spatialdreamer.synth.videos import write_scene  # noqa: E402
from spatialdreamer.train import TrainConfig, Trainer, make_loader  # noqa: E402
from spatialdreamer.train.checkpoint import export_pipeline  # noqa: E402
from spatialdreamer.train.loop import calibration_frames  # noqa: E402

SIZE = (64, 96)  # training and evaluation resolution (H, W)


def build_corpus(work: Path, videos: int, frames: int) -> tuple[Path, float]:
    """Synth source videos → the corpus job (embedded Ray); returns the corpus root and seconds."""
    root = work / "corpus"
    if (root / "manifest").is_dir():
        return root, 0.0
    source = work / "videos"
    for seed in range(videos):
        spec = random_spec(100 + seed, height=96, width=160, frames=frames, fps=24.0)
        write_scene(spec, source, f"train_{seed:03d}", audio=False)
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "pipelines.build_dataset", "--input", str(source), "--output", str(root)]
    subprocess.run([*cmd, "--config", "tiny"], cwd=REPO, check=True)
    return root, time.perf_counter() - began


def train_stage(cfg: TrainConfig, corpus: Path, seconds: float, out: Path, calibration) -> dict:
    """Train one stage for ``seconds`` of wall time (at most ``cfg.steps``); save a checkpoint."""
    dataset = StereoClipDataset(
        str(corpus), cfg.frames, cfg.size, stride=cfg.frame_stride, cache_clips=cfg.cache_clips
    )
    trainer = Trainer(cfg, calibration_frames=calibration)
    loader = make_loader(dataset, cfg)
    began, losses = time.perf_counter(), []
    for batch in loader:
        losses.append(trainer.train_step(batch)["loss"])
        if trainer.step % 100 == 0:
            recent = sum(losses[-100:]) / len(losses[-100:])
            print(f"  {cfg.stage} step {trainer.step}: loss {recent:.4f}", flush=True)
        if time.perf_counter() - began > seconds:
            break
    trainer.save_checkpoint(str(out))
    first, last = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
    return {
        "steps": trainer.step,
        "seconds": time.perf_counter() - began,
        "samples": len(dataset),
        "loss_first_10pct": sum(first) / len(first),
        "loss_last_10pct": sum(last) / len(last),
    }


def hole_scores(pred: torch.Tensor, target: torch.Tensor, holes: torch.Tensor) -> tuple[float, float]:
    return psnr(pred, target, data_range=1.0, mask=holes), ssim(pred, target, data_range=1.0, mask=holes)


def evaluate(methods: dict, scenes: list, vae) -> dict[str, dict[str, float]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in [*methods, "vae ceiling"]}
    for scene in scenes:
        warped = forward_warp(scene.left, scene.disparity)
        holes, rendered = warped.holes, warped.image.masked_fill(warped.holes, 0.0)
        for name, method in methods.items():
            pred = method(rendered, holes, scene.left, warped.disparity)
            results[name].append(hole_scores(pred, scene.right, holes))
        ceiling = decode_latents(vae, encode_frames(vae, scene.right))
        results["vae ceiling"].append(hole_scores(ceiling, scene.right, holes))
    out = {}
    for name, values in results.items():
        finite = [p for p, _ in values if math.isfinite(p)]
        out[name] = {
            "psnr": sum(finite) / len(finite) if finite else float("inf"),
            "ssim": sum(s for _, s in values) / len(values),
        }
    return out


def refiner(pipe: SpatialDreamerPipeline, steps: int):
    pipe.set_progress_bar_config(disable=True)

    def run(rendered, holes, left, _disparity):
        generator = torch.Generator().manual_seed(0)
        return pipe(rendered, holes, left, num_inference_steps=steps, generator=generator).frames

    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="refiner_learning_out", help="scratch folder (reused if present)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget, both stages together")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps at evaluation")
    parser.add_argument("--videos", type=int, default=12, help="synth source videos for the corpus")
    parser.add_argument("--frames", type=int, default=48, help="frames per source video")
    parser.add_argument("--scenes", type=int, default=4, help="held-out evaluation scenes")
    args = parser.parse_args()
    tune_cpu_allocator()
    torch.manual_seed(0)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    corpus, corpus_seconds = build_corpus(work, args.videos, args.frames)
    common = dict(
        model="tiny",
        resolution=list(SIZE),
        learning_rate=5e-4,
        weight_decay=0.0,
        warmup_steps=50,
        ema_decay=0.999,
        data_workers=0,
        cache_clips=512,  # the whole small corpus stays decoded in memory
        steps=1_000_000,  # bounded by time instead
        checkpoint_every=1_000_000,
        log_every=1_000_000,
    )
    frames_cfg = TrainConfig.from_dict(common | {"stage": "frames", "batch_size": 8})
    calibration = calibration_frames(StereoClipDataset(str(corpus), 1, SIZE))
    budget = args.minutes * 60
    print(
        f"corpus: {corpus} ({corpus_seconds:.0f} s to build); training for {args.minutes:g} min", flush=True
    )
    stats = {"frames": train_stage(frames_cfg, corpus, budget / 2, work / "frames", calibration)}
    video_cfg = TrainConfig.from_dict(
        common | {"stage": "video", "batch_size": 2, "num_frames": 4, "init_from": str(work / "frames")}
    )
    stats["video"] = train_stage(video_cfg, corpus, budget / 2, work / "video", None)
    trained = SpatialDreamerPipeline.from_pretrained(
        export_pipeline(str(work / "video"), str(work / "pipeline"))
    )

    untrained = build_pipeline("tiny", seed=1)
    calibrate_latent_scale(untrained.vae, calibration)  # the same latent space as the trained one
    bench = BenchmarkConfig(scenes=args.scenes, seed=1000, height=SIZE[0], width=SIZE[1], frames=8)
    names = ensure_benchmark(work / "bench", bench)
    scenes = [load_scene(work / "bench", name) for name in names]
    methods = {
        "untrained": refiner(untrained, args.steps),
        "trained": refiner(trained, args.steps),
        "trained, 1 step": refiner(trained, 1),
        "classical fill": lambda r, h, left, d: fill_holes(r, h, d),
        "copy-left": lambda r, h, left, d: torch.where(h, left, r),
    }
    began = time.perf_counter()
    scores = evaluate(methods, scenes, trained.vae)
    print(
        f"\nevaluated {len(scenes)} held-out scenes ({SIZE[0]}x{SIZE[1]}, 8 frames) in "
        f"{time.perf_counter() - began:.0f} s"
    )
    for stage, s in stats.items():
        print(
            f"{stage:6s}: {s['steps']} steps in {s['seconds'] / 60:.1f} min on {s['samples']} samples; "
            f"loss {s['loss_first_10pct']:.4f} -> {s['loss_last_10pct']:.4f}"
        )
    print("\n| hole region (held-out) | PSNR dB | SSIM |\n|---|---|---|")
    for name, s in scores.items():
        shown = "lossless" if s["psnr"] >= 99.0 else f"{s['psnr']:.2f}"  # psnr() caps at 100 dB
        print(f"| {name} | {shown} | {s['ssim']:.3f} |")
    (work / "results.json").write_text(
        json.dumps({"training": stats, "scores": scores, "corpus_seconds": corpus_seconds}, indent=1)
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
