"""Score stereo right-view synthesis and write the results table (Ray Data).

    python -m pipelines.evaluate [--out eval_out] [--pipeline DIR] [--pred DIR ...]
    python -m pipelines.evaluate --gt DIR --pred DIR [--pred DIR ...] [--masks DIR] [--left DIR]

Default: make (or reuse) the fixed-seed synth benchmark under OUT/benchmark, run the baselines
on it, score them and any --pred folders (videos named like the scenes), and write
OUT/results.csv, OUT/results.md and OUT/per_video.csv. With --gt, score --pred folders against
that folder instead (files paired by name; --left adds the copy-the-left-view row).
Runs on a local embedded Ray unless RAY_ADDRESS names a cluster.

    scenes ─► predict (baselines, actor pool) ─┐
    --pred folders ────────────────────────────┴─► score (actor pool) ─► tables
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.configs import read_config
from pipelines.ray_session import RayNoiseFilter, connect
from spatialdreamer.cli.help import HelpFormatter, add_verbose

if TYPE_CHECKING:  # the library loads torch: imported where used, so --help answers at once
    import pandas as pd

    from spatialdreamer.eval import BenchmarkConfig

_DEFAULTS = {
    "methods": ["identity", "naive_dibr", "dvg_fill", "dvg_fill_depth"],
    "depth_model": "parallax",
    "refiner_steps": 25,
    "lpips_net": "alex",
    "fvd_frames": 16,
    "chunk_size": 16,
    "predict_concurrency": [1, 2],
    "score_concurrency": [1, 2],
}
_BENCH_KEYS = ("scenes", "seed", "width", "height", "frames", "fps")


def load_config(name_or_path: str, overrides: dict) -> dict:
    """``pipelines/configs/<name>.yaml`` or a YAML path, over the defaults, with overrides."""
    path, settings = read_config(name_or_path, listing="eval*.yaml")
    values = {**_DEFAULTS, **settings}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(_DEFAULTS) - set(_BENCH_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    return values


def _bench_config(values: dict) -> BenchmarkConfig:
    from spatialdreamer.eval import BenchmarkConfig

    base = BenchmarkConfig()
    return BenchmarkConfig(**{k: type(getattr(base, k))(values[k]) for k in _BENCH_KEYS if k in values})


def _external_rows(
    preds: list[str], names: list[str], gt: str, masks: str | None, left: str | None
) -> list[dict]:
    from spatialdreamer.eval import pair_videos

    rows = []
    for i, folder in enumerate(preds):
        method = names[i] if i < len(names) else Path(folder).resolve().name
        for pair in pair_videos(folder, gt, masks, left if i == 0 else None):
            rows.append(_row(pair.name, method, pair.pred, pair.gt, pair.mask))
            if pair.left is not None:
                rows.append(_row(pair.name, "identity", pair.left, pair.gt, pair.mask))
    return rows


def _pool(sizes) -> object:
    """An actor pool of ``[min, max]`` actors (one number: a fixed size)."""
    import ray

    low, high = (int(sizes), int(sizes)) if isinstance(sizes, int) else (int(sizes[0]), int(sizes[-1]))
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def _row(scene: str, method: str, pred: Path, gt: Path, mask: Path | None) -> dict:
    return {
        "scene": scene,
        "method": method,
        "pred": str(pred),
        "gt": str(gt),
        "mask": str(mask) if mask else "",
        "seconds": float("nan"),
        "error": "",
    }


def _status(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"evaluate: {text}", file=sys.stderr, flush=True)


def evaluate(args: argparse.Namespace, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Run the job; returns (per-video rows, summary, notes)."""
    import pandas as pd
    import ray
    from tqdm import tqdm

    from spatialdreamer.eval import BASELINES, PredictStage, ScoreStage, ensure_benchmark, summarise
    from spatialdreamer.eval.folders import notes_for, resolve_lpips
    from spatialdreamer.metrics import load_i3d, load_raft

    notes: list[str] = []
    out = Path(args.out)
    lpips_settings, note = resolve_lpips(config["lpips_net"], args.lpips_backbone, args.lpips_weights)
    if note:
        notes.append(note)
    if args.i3d:
        load_i3d(args.i3d)  # a missing or wrong file fails here, not in every worker
    if args.raft_weights:
        load_raft(args.raft_weights)  # likewise

    methods: list[str] = []
    external: list[dict] = []
    bench_root = Path(args.benchmark) if args.benchmark else out / "benchmark"
    if args.gt:
        if not args.pred:
            raise ValueError("--gt needs at least one --pred folder to score")
        external = _external_rows(args.pred, args.name, args.gt, args.masks, args.left)
        scenes: list[str] = []
    else:
        if args.masks or args.left:
            raise ValueError("--masks and --left go with --gt; the benchmark has its own")
        methods = list(config["methods"])
        if args.pipeline:
            methods.append("dvg_refiner")
        elif "dvg_refiner" in methods:
            raise ValueError("the config lists dvg_refiner: pass --pipeline PATH (a save_pretrained folder)")
        else:
            notes.append("DVG + RefinerNet omitted: no trained pipeline given (pass --pipeline PATH).")
        if "identity" not in methods:
            methods.insert(0, "identity")  # PSNR is never reported without it
        _status(args, f"preparing the benchmark in {bench_root} ...")
        scenes = ensure_benchmark(bench_root, _bench_config(config))
        if args.pred:
            right, holes = str(bench_root / "right"), str(bench_root / "occlusion")
            external = _external_rows(args.pred, args.name, right, holes, None)

    _status(args, "starting Ray ...")
    connect(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = bool(args.verbose)
    parts = []
    if scenes:
        ds = ray.data.from_items([{"scene": s} for s in scenes], override_num_blocks=len(scenes))
        parts.append(
            ds.map_batches(
                PredictStage,
                fn_constructor_kwargs={
                    "bench_root": str(bench_root),
                    "out_dir": str(out),
                    "methods": methods,
                    "pipeline": args.pipeline,
                    "depth_model": config["depth_model"],
                    "refiner_steps": int(config["refiner_steps"]),
                },
                batch_size=1,
                num_cpus=1,
                compute=_pool(config["predict_concurrency"]),
            )
        )
    if external:
        parts.append(ray.data.from_items(external, override_num_blocks=min(len(external), 64)))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={
            "lpips": lpips_settings,
            "i3d": args.i3d,
            "raft_weights": args.raft_weights,
            "fvd_frames": int(config["fvd_frames"]),
            "chunk_size": int(config["chunk_size"]),
        },
        batch_size=1,
        num_cpus=1,
        compute=_pool(config["score_concurrency"]),
    )
    total = len(scenes) * len(methods) + len(external)
    quiet = getattr(args, "quiet", False)
    with tqdm(total=total, unit="video", desc="evaluate", disable=quiet, dynamic_ncols=True) as bar:
        rows = []
        for row in ds.iter_rows():  # one per (method, scene): predicted, then scored
            rows.append(row)
            bar.update(1)
    per_video = pd.DataFrame(rows)
    per_video = per_video.sort_values(["method", "scene"], kind="stable").reset_index(drop=True)
    summary = summarise(per_video, order=BASELINES)
    notes += notes_for(summary, i3d=args.i3d, identity_scored="identity" in set(per_video["method"]))
    return per_video, summary, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--out", default="eval_out", help="output folder (default eval_out)")
    parser.add_argument(
        "--config", default="eval", help="eval config (pipelines/configs/eval*.yaml) or a YAML path"
    )
    parser.add_argument("--benchmark", default=None, help="benchmark folder (default OUT/benchmark)")
    parser.add_argument("--scenes", type=int, default=None, help="override the number of benchmark scenes")
    parser.add_argument(
        "--pipeline", default=None, help="trained SpatialDreamer pipeline folder: adds DVG + RefinerNet"
    )
    parser.add_argument(
        "--refiner-steps", type=int, default=None, help="denoising steps for DVG + RefinerNet"
    )
    parser.add_argument(
        "--pred", action="append", default=[], help="a folder of predicted right views (repeatable)"
    )
    parser.add_argument(
        "--name", action="append", default=[], help="method name of each --pred (default: folder name)"
    )
    parser.add_argument("--gt", default=None, help="ground-truth folder (instead of the benchmark)")
    parser.add_argument("--masks", default=None, help="hole-mask videos for --gt (white = hole)")
    parser.add_argument("--left", default=None, help="left views for --gt: adds the copy-the-left-view row")
    parser.add_argument(
        "--lpips-backbone", default=None, help="torchvision AlexNet/VGG16 ImageNet checkpoint"
    )
    parser.add_argument("--lpips-weights", default=None, help="LPIPS v0.1 linear layers (alex.pth / vgg.pth)")
    parser.add_argument(
        "--i3d", default=None, help="I3D weights for FVD (InceptionI3d state dict or TorchScript)"
    )
    parser.add_argument(
        "--raft-weights", default=None, help="RAFT checkpoint (raft-things.pth): E_warp flow by RAFT"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    add_verbose(parser, True, "full tracebacks, Ray's own messages and its progress bars")
    args = parser.parse_args(argv)
    from spatialdreamer.eval import LABELS, write_results
    from spatialdreamer.eval.harness import shown_columns
    from spatialdreamer.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    began = time.perf_counter()
    try:
        config = load_config(args.config, {"scenes": args.scenes, "refiner_steps": args.refiner_steps})
        with RayNoiseFilter(verbose=args.verbose):
            per_video, summary, notes = evaluate(args, config)
        csv_path, md_path = write_results(per_video, summary, args.out, notes, LABELS)
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"evaluate: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    print(md_path.read_text(), end="")
    shown = {c for c, _, _ in shown_columns(summary)}
    omitted = [label for col, label in (("lpips", "LPIPS"), ("fvd", "FVD")) if col not in shown]
    if omitted:
        print(f"(columns omitted: {', '.join(omitted)}; the notes above say why)")
    failed = per_video[per_video["error"] != ""]
    for _, row in failed.iterrows():
        print(f"evaluate: failed: {row['method']} {row['scene']}: {row['error']}", file=sys.stderr)
    elapsed = time.perf_counter() - began
    print(f"wrote {csv_path}, {md_path} and {Path(args.out) / 'per_video.csv'} in {elapsed:.1f} s")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
