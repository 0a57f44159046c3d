"""Train the denoiser and RefinerNet on a stereo corpus, data parallel with Ray Train.

    python -m pipelines.train --corpus DST --output CKPT [--config tiny|base|full|PATH]
                              [--stage frames|video] [--num-workers N] [--steps S]
                              [--batch-size B] [--query Q]

The paper's recipe is two runs into the same CKPT: ``--stage frames`` (single frames, the
denoiser's temporal layers frozen), then ``--stage video`` (every layer, on windows), which
starts from the frames stage's latest checkpoint (its EMA weights). A stage's checkpoints go to
CKPT/<stage>/step_XXXXXXXX/ (each a SpatialDreamerPipeline folder plus training_state/); the
stage's final EMA weights are exported to CKPT/pipeline/, the folder ``spatialdreamer convert
--refiner`` takes. A config's ``stages:`` section holds per-stage overrides of ``train:``.

Runs on a local embedded Ray unless RAY_ADDRESS names a cluster. Each worker trains one
replica (``spatialdreamer.train.run_worker``; DDP over gloo on CPU, NCCL on GPU, one GPU per
worker when the cluster has GPUs) and reads its own deterministic share of the corpus windows.

Resume: a crashed worker is restarted from the latest checkpoint (``ray.max_failures`` in the
config); a crashed or stopped job resumes when the same command is run again, and a finished
one continues when rerun with a larger --steps.

Data: a torch Dataset over the manifest with a per-rank step sampler (DistributedSampler
sharding, made resumable mid-epoch) rather than Ray Data: decoding a clip is one cheap
in-process call, and a resumed run must see exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from pipelines.configs import read_config
from pipelines.ray_session import RayNoiseFilter, connect
from spatialdreamer.cli.help import HelpFormatter, add_verbose

if TYPE_CHECKING:  # the library loads torch: imported where used, so --help answers at once
    from spatialdreamer.train import TrainConfig

STAGES = ("frames", "video")
_RAY_KEYS = {"num_workers", "cpus_per_worker", "use_gpu", "max_failures", "keep_checkpoints"}
_RAY_DEFAULTS = {
    "num_workers": 1,
    "cpus_per_worker": 1,
    "use_gpu": "auto",
    "max_failures": 2,
    "keep_checkpoints": 3,
}

log = logging.getLogger("pipelines.train")


def load_config(
    name_or_path: str, overrides: dict | None = None, stage: str = "video"
) -> tuple[TrainConfig, dict]:
    """``(TrainConfig, ray settings)`` of one stage from ``configs/train_<name>.yaml`` or a YAML
    path: ``train:`` updated by ``stages: {<stage>: …}``, then by ``overrides``."""
    from spatialdreamer.train import TrainConfig

    path, values = read_config(name_or_path, prefix="train_", listing="train_*.yaml", kind="train config")
    if set(values) - {"train", "ray", "stages"}:
        raise ValueError(f"config {path} must be a mapping with 'train', 'stages' and 'ray' sections")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    stages = dict(values.get("stages") or {})
    if set(stages) - set(STAGES):
        raise ValueError(f"config {path}: unknown stages {sorted(set(stages) - set(STAGES))}")
    train = dict(values.get("train") or {}) | dict(stages.get(stage) or {}) | {"stage": stage}
    ray_cfg = _RAY_DEFAULTS | dict(values.get("ray") or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        (ray_cfg if key in _RAY_KEYS else train)[key] = value
    unknown = sorted(set(ray_cfg) - _RAY_KEYS)
    if unknown:
        raise ValueError(
            f"unknown ray settings: {', '.join(unknown)} (known: {', '.join(sorted(_RAY_KEYS))})"
        )
    if not isinstance(ray_cfg["num_workers"], int) or ray_cfg["num_workers"] < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {ray_cfg['num_workers']!r}")
    if ray_cfg["use_gpu"] not in ("auto", True, False):
        raise ValueError(f"use_gpu must be auto, true or false, got {ray_cfg['use_gpu']!r}")
    return TrainConfig.from_dict(train), ray_cfg


def train_loop_per_worker(settings: dict) -> None:
    """What each Ray Train worker runs: the library loop with Ray's rank, device and reporting."""
    import ray.train
    import ray.train.torch

    from spatialdreamer.runtime import tune_cpu_allocator
    from spatialdreamer.train import TrainConfig, run_worker

    tune_cpu_allocator()
    logging.basicConfig(
        level=settings.get("log_level", logging.INFO), format="%(levelname)s %(name)s: %(message)s"
    )
    # the loop's step lines (rank 0, every log_every steps) are the job's progress: always shown
    logging.getLogger("spatialdreamer.train").setLevel(logging.INFO)
    config = TrainConfig.from_dict(settings["train"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        name = f"step_{int(metrics['step']):08d}" if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    kwargs = dict(
        rank=context.get_world_rank(), world_size=context.get_world_size(), device=device, report=report
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_worker(config, settings["corpus"], **kwargs)
    else:
        with checkpoint.as_directory() as folder:  # read once at start, before training
            run_worker(config, settings["corpus"], resume_from=folder, **kwargs)


def latest_checkpoint(run_dir: str) -> str | None:
    """The highest ``step_*`` checkpoint folder of a stage's run folder (local paths)."""
    from spatialdreamer.train import STATE_DIR

    if not os.path.isdir(run_dir):
        return None
    steps = sorted(
        d
        for d in os.listdir(run_dir)
        if d.startswith("step_") and os.path.isdir(os.path.join(run_dir, d, STATE_DIR))
    )
    return os.path.join(run_dir, steps[-1]) if steps else None


def _init_ray():
    # RAY_ADDRESS, when set, names the cluster; otherwise Ray starts an embedded local one.
    return connect(include_dashboard=False)


def train(corpus: str, output: str, config: TrainConfig, ray_cfg: dict, verbose: bool = False) -> dict:
    """Run (or resume) the Ray Train job; returns a summary of the final checkpoint."""
    from spatialdreamer.data.dataset import StereoClipDataset
    from spatialdreamer.train import STATE_DIR, TrainConfig, read_training_state
    from spatialdreamer.train.checkpoint import export_pipeline

    corpus = corpus if "://" in corpus else os.path.abspath(corpus)
    output = output if "://" in output else os.path.abspath(output)
    if config.stage == "video" and config.init_from is None and "://" not in output:
        frames = latest_checkpoint(os.path.join(output, "frames"))
        if frames is not None:  # the paper's second stage starts from the first
            config = TrainConfig.from_dict(config.to_dict() | {"init_from": frames})
    # fail fast, before any worker starts: the corpus must exist and the query select something
    dataset = StereoClipDataset(
        corpus, config.frames, config.size, query=config.query, stride=config.frame_stride
    )
    print(
        f"train: starting {ray_cfg['num_workers']} worker(s) for {config.steps} steps; "
        f"rank 0 reports every {config.log_every} steps",
        file=sys.stderr,
        flush=True,
    )
    ray = _init_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpus = ray.cluster_resources().get("GPU", 0) > 0
    use_gpu = gpus if ray_cfg["use_gpu"] == "auto" else bool(ray_cfg["use_gpu"])
    scaling = ScalingConfig(
        num_workers=ray_cfg["num_workers"],
        use_gpu=use_gpu,
        resources_per_worker={"CPU": ray_cfg["cpus_per_worker"]} | ({"GPU": 1} if use_gpu else {}),
    )
    run_config = RunConfig(
        name=config.stage,
        storage_path=output,
        checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg["keep_checkpoints"]),
        failure_config=FailureConfig(max_failures=ray_cfg["max_failures"]),
    )
    log.info(
        "training %s, stage %s%s, on %d samples (%d clips) with %d workers%s",
        config.model,
        config.stage,
        f" from {config.init_from}" if config.init_from else "",
        len(dataset),
        len(dataset.rows),
        ray_cfg["num_workers"],
        " (GPU)" if use_gpu else "",
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": config.to_dict(),
            "corpus": corpus,
            "log_level": logging.INFO if verbose else logging.WARNING,
        },
        scaling_config=scaling,
        run_config=run_config,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {output}/{config.stage}")
    summary = {
        "checkpoint": result.checkpoint.path,
        "metrics": dict(result.metrics or {}),
        "init_from": config.init_from,
    }
    if "://" not in output:
        with result.checkpoint.as_directory() as folder:
            summary["step"] = read_training_state(os.path.join(folder, STATE_DIR))["step"]
            summary["pipeline"] = export_pipeline(folder, os.path.join(output, "pipeline"))
    return summary


def _one_line(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError: the workers' own errors
    if failures:
        exc = next(iter(failures.values()))
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the user's exception
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (
        lines[-1] if len(lines) > 1 and "Traceback" in text else (lines[0] if lines else type(exc).__name__)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="corpus root written by pipelines.build_dataset")
    parser.add_argument("--output", required=True, help="run folder: checkpoints and the exported pipeline")
    parser.add_argument(
        "--config", default="tiny", help="tiny, base, full (pipelines/configs/train_*.yaml) or a YAML path"
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="video",
        help="frames: single frames, temporal layers frozen; video: all layers, starting from the "
        "frames stage's checkpoint in OUTPUT when there is one (default: video)",
    )
    parser.add_argument(
        "--init-from", default=None, help="checkpoint or pipeline folder whose weights start this stage"
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="training workers (one GPU each on GPU clusters)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="total optimizer steps (a rerun continues to this)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="samples per worker per step")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    parser.add_argument(
        "--query", default=None, help="pandas query over the manifest, e.g. 'hole_ratio < 0.2'"
    )
    parser.add_argument(
        "--pretrained", default=None, help="SVD hub id/folder or a SpatialDreamer pipeline folder"
    )
    add_verbose(parser, True, "log details, show Ray's own messages and tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from spatialdreamer.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    overrides = {
        "num_workers": args.num_workers,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "query": args.query,
        "pretrained": args.pretrained,
        "init_from": args.init_from,
    }
    try:
        config, ray_cfg = load_config(args.config, overrides, stage=args.stage)
        with RayNoiseFilter(verbose=args.verbose):
            summary = train(args.corpus, args.output, config, ray_cfg, verbose=args.verbose)
    except KeyboardInterrupt:
        print(
            "train: interrupted; rerun the same command to resume from the latest checkpoint", file=sys.stderr
        )
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"train: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    metrics = summary["metrics"]
    step, loss = summary.get("step", metrics.get("step")), metrics.get("loss", float("nan"))
    print(f"trained {config.stage} stage to step {step}: loss {loss:.4f}")
    if summary.get("init_from"):
        print(f"started from: {summary['init_from']}")
    print(f"checkpoint: {summary['checkpoint']}")
    if "pipeline" in summary:
        print(f"pipeline:   {summary['pipeline']}  (SpatialDreamerPipeline.from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
