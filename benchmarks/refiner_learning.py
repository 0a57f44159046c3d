"""Does training teach the refiner? Hole-region quality on held-out scenes, before and after.

    python benchmarks/refiner_learning.py [--work DIR] [--minutes 15] [--steps 10]

1. Builds a small corpus with the corpus job (``pipelines.build_dataset``, the ``tiny`` config
   with a larger depth budget, weight-free ``parallax`` depth) from synth videos.
2. Trains the ``tiny`` models for a fixed wall-time budget on all but ``--held-out`` of those
   videos, split between the paper's two stages: ``frames`` (single frames, temporal layers
   frozen), then ``video`` (4-frame windows, starting from the frames stage's EMA weights).
   Exports the EMA pipeline.
3. Scores hole regions only — PSNR and SSIM over hole pixels — in two held-out sets:

   * benchmark scenes (other seeds, true disparity, ray-cast right views): the real task;
   * the warp-back pairs of the held-out videos' corpus clips (ground truth: the source
     frames): the training task on videos the model never saw.

   For each:

   * untrained: the same architecture, randomly initialised, in the same calibrated latent space;
   * trained: the exported pipeline (EMA weights), ``--steps`` denoising steps, and one step;
   * classical fill: the converter's default (background propagation + inpainting);
   * copy reference: the reference view's pixels in the holes (copy-left on the benchmark: the
     do-nothing baseline);
   * VAE ceiling: the true right view through the latent space (what a perfect denoiser
     could reach; the tiny config's space-to-depth autoencoder is lossless).

Prints Markdown tables and writes ``WORK/results.json``. Timings vary with machine load; the
process runs with one intra-op thread and passive OpenMP waiting, which keeps a loaded 2-core
machine from collapsing (a training step took 17 s with the defaults under load, 0.5 s so).
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spatialdreamer.data import load_manifest  # noqa: E402
from spatialdreamer.data.dataset import StereoClipDataset  # noqa: E402
from spatialdreamer.dvg import forward_warp  # noqa: E402
from spatialdreamer.eval.benchmark import BenchmarkConfig, ensure_benchmark, load_scene  # noqa: E402
from spatialdreamer.metrics import psnr, ssim  # noqa: E402
from spatialdreamer.models import SpatialDreamerPipeline, build_pipeline  # noqa: E402
from spatialdreamer.models.autoencoder import calibrate_latent_scale  # noqa: E402
from spatialdreamer.models.conditioning import decode_latents, encode_frames  # noqa: E402
from spatialdreamer.models.reference import rendered_view  # noqa: E402
from spatialdreamer.runtime import tune_cpu_allocator  # noqa: E402
from spatialdreamer.stereo import fill_holes  # noqa: E402
from spatialdreamer.synth import random_spec  # noqa: E402
from spatialdreamer.synth.videos import write_scene  # noqa: E402
from spatialdreamer.train import TrainConfig, Trainer, make_loader  # noqa: E402
from spatialdreamer.train.checkpoint import export_pipeline  # noqa: E402
from spatialdreamer.train.loop import calibration_frames  # noqa: E402

SIZE = (64, 96)  # training and evaluation resolution (H, W)


def build_corpus(work: Path, videos: int, frames: int, budget: list[float]) -> tuple[Path, float]:
    """Synth source videos → the corpus job (embedded Ray); returns the corpus root and seconds."""
    root = work / "corpus"
    if (root / "manifest").is_dir():
        return root, 0.0
    source = work / "videos"
    for seed in range(videos):
        spec = random_spec(100 + seed, height=96, width=160, frames=frames, fps=24.0)
        write_scene(spec, source, f"train_{seed:03d}", audio=False)
    config = yaml.safe_load((REPO / "pipelines" / "configs" / "tiny.yaml").read_text())
    config["budget_range"] = list(budget)  # holes of the size the benchmark scenes have
    (work / "corpus.yaml").write_text(yaml.safe_dump(config))
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "pipelines.build_dataset", "--input", str(source), "--output", str(root)]
    subprocess.run([*cmd, "--config", str(work / "corpus.yaml")], cwd=REPO, check=True)
    return root, time.perf_counter() - began


def train_stage(cfg: TrainConfig, corpus: Path, seconds: float, out: Path, calibration) -> dict:
    """Train one stage for ``seconds`` of wall time (at most ``cfg.steps``); save a checkpoint."""
    dataset = StereoClipDataset(
        str(corpus),
        cfg.frames,
        cfg.size,
        query=cfg.query,
        stride=cfg.frame_stride,
        cache_clips=cfg.cache_clips,
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


def benchmark_cases(scenes: list):
    """Right views of benchmark scenes: (rendered, holes, reference, disparity, truth)."""
    for scene in scenes:
        warped = forward_warp(scene.left, scene.disparity)
        yield warped.image, warped.holes, scene.left, warped.disparity, scene.right


def warp_back_cases(dataset: StereoClipDataset):
    """Warp-back windows with holes: the source eye rebuilt from the other eye."""
    for i in range(len(dataset)):
        s = dataset[i]
        if s["mask"].any():
            yield s["rendered"], s["mask"], s["reference"], s["disparity"], s["target"]


def evaluate(methods: dict, cases, vae) -> dict[str, dict[str, float]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in [*methods, "vae ceiling"]}
    for rendered, holes, reference, disparity, truth in cases:
        rendered = rendered.masked_fill(holes, 0.0)
        for name, method in methods.items():
            pred = method(rendered, holes, reference, disparity)
            results[name].append(hole_scores(pred, truth, holes))
        ceiling = decode_latents(vae, encode_frames(vae, truth))
        results["vae ceiling"].append(hole_scores(ceiling, truth, holes))
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

    def run(rendered, holes, reference, disparity):
        generator = torch.Generator().manual_seed(0)
        condition = rendered_view(rendered, holes, disparity)  # as convert --refiner does
        return pipe(condition, holes, reference, num_inference_steps=steps, generator=generator).frames

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
    parser.add_argument("--held-out", type=int, default=2, help="source videos kept out of training")
    parser.add_argument(
        "--budget", type=float, nargs=2, default=[6.0, 10.0], help="corpus depth budget, %% of width"
    )
    parser.add_argument("--hole-loss-weight", type=float, default=10.0, help="1 = the paper's plain loss")
    args = parser.parse_args()
    tune_cpu_allocator()
    torch.manual_seed(0)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    corpus, corpus_seconds = build_corpus(work, args.videos, args.frames, args.budget)
    videos = sorted(load_manifest(str(corpus)).video_id.unique())
    held_out = videos[len(videos) - args.held_out :]
    common = dict(
        model="tiny",
        resolution=list(SIZE),
        learning_rate=5e-4,
        weight_decay=0.0,
        warmup_steps=50,
        ema_decay=0.999,
        hole_loss_weight=args.hole_loss_weight,
        query=f"video_id not in {held_out!r}",
        data_workers=0,
        cache_clips=512,  # the whole small corpus stays decoded in memory
        steps=1_000_000,  # bounded by time instead
        checkpoint_every=1_000_000,
        log_every=1_000_000,
    )
    frames_cfg = TrainConfig.from_dict(common | {"stage": "frames", "batch_size": 8})
    calibration = calibration_frames(StereoClipDataset(str(corpus), 1, SIZE, query=frames_cfg.query))
    budget = args.minutes * 60
    print(f"corpus: {corpus} ({corpus_seconds:.0f} s to build); training {args.minutes:g} min", flush=True)
    stats = {"frames": train_stage(frames_cfg, corpus, budget / 2, work / "frames", calibration)}
    video_cfg = TrainConfig.from_dict(
        common | {"stage": "video", "batch_size": 2, "num_frames": 4, "init_from": str(work / "frames")}
    )
    stats["video"] = train_stage(video_cfg, corpus, budget / 2, work / "video", None)
    exported = export_pipeline(str(work / "video"), str(work / "pipeline"))
    trained = SpatialDreamerPipeline.from_pretrained(exported)

    untrained = build_pipeline("tiny", seed=1)
    calibrate_latent_scale(untrained.vae, calibration)  # the same latent space as the trained one
    bench = BenchmarkConfig(scenes=args.scenes, seed=1000, height=SIZE[0], width=SIZE[1], frames=8)
    names = ensure_benchmark(work / "bench", bench)
    scenes = [load_scene(work / "bench", name) for name in names]
    methods = {
        "untrained": refiner(untrained, args.steps),
        "trained": refiner(trained, args.steps),
        "trained, 1 step": refiner(trained, 1),
        "classical fill": lambda r, h, ref, d: fill_holes(r, h, d),
        "copy reference": lambda r, h, ref, d: torch.where(h, ref, r),
    }
    held_clips = StereoClipDataset(
        str(corpus), 4, SIZE, query=f"video_id in {held_out!r}", stride=8, cache_clips=64
    )
    tables = {}
    for title, cases in (
        (f"benchmark scenes ({len(scenes)}, true disparity)", benchmark_cases(scenes)),
        (f"warp-back pairs of {len(held_out)} held-out videos", warp_back_cases(held_clips)),
    ):
        began = time.perf_counter()
        tables[title] = evaluate(methods, cases, trained.vae)
        print(f"evaluated {title} in {time.perf_counter() - began:.0f} s", flush=True)
    for stage, s in stats.items():
        print(
            f"{stage:6s}: {s['steps']} steps in {s['seconds'] / 60:.1f} min on {s['samples']} samples; "
            f"loss {s['loss_first_10pct']:.4f} -> {s['loss_last_10pct']:.4f}"
        )
    print(f"hole loss weight {args.hole_loss_weight:g}; {args.steps} denoising steps; {SIZE[0]}x{SIZE[1]}")
    for title, scores in tables.items():
        print(f"\n| hole region: {title} | PSNR dB | SSIM |\n|---|---|---|")
        for name, s in scores.items():
            shown = "lossless" if s["psnr"] >= 99.0 else f"{s['psnr']:.2f}"  # psnr() caps at 100 dB
            print(f"| {name} | {shown} | {s['ssim']:.3f} |")
    summary = {"training": stats, "tables": tables, "corpus_seconds": corpus_seconds, "args": vars(args)}
    (work / "results.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
