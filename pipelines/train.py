"""Train the denoiser and RefinerNet on a stereo corpus, data parallel with Ray Train.

    python -m pipelines.train --corpus DST --output CKPT [--config tiny|base|full|PATH]
                              [--num-workers N] [--steps S] [--batch-size B] [--query Q]

Runs on a local embedded Ray unless RAY_ADDRESS names a cluster. Each worker trains one
replica (``spatialdreamer.train.run_worker``; DDP over gloo on CPU, NCCL on GPU, one GPU per
worker when the cluster has GPUs) and reads its own deterministic share of the corpus windows.
Checkpoints go to CKPT/run/step_XXXXXXXX/ (each a SpatialDreamerPipeline folder plus
training_state/); the final weights are exported to CKPT/pipeline/.

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
import shutil
import sys
import tempfile

from pipelines.configs import read_config
from spatialdreamer.data.dataset import StereoClipDataset
from spatialdreamer.runtime import tune_cpu_allocator, worker_env
from spatialdreamer.train import STATE_DIR, TrainConfig, read_training_state, run_worker

RUN_NAME = "run"
_RAY_KEYS = {"num_workers", "cpus_per_worker", "use_gpu", "max_failures", "keep_checkpoints"}
_RAY_DEFAULTS = {
    "num_workers": 1,
    "cpus_per_worker": 1,
    "use_gpu": "auto",
    "max_failures": 2,
    "keep_checkpoints": 3,
}

log = logging.getLogger("pipelines.train")


def load_config(name_or_path: str, overrides: dict | None = None) -> tuple[TrainConfig, dict]:
    """``(TrainConfig, ray settings)`` from ``configs/train_<name>.yaml`` or a YAML path."""
    path, values = read_config(name_or_path, prefix="train_", listing="train_*.yaml", kind="train config")
    if set(values) - {"train", "ray"}:
        raise ValueError(f"config {path} must be a mapping with 'train' and 'ray' sections")
    train = dict(values.get("train") or {})
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

    tune_cpu_allocator()
    logging.basicConfig(
        level=settings.get("log_level", logging.INFO), format="%(levelname)s %(name)s: %(message)s"
    )
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


def export_pipeline(checkpoint_dir: str, destination: str) -> str:
    """Copy a checkpoint's pipeline (without optimizer state) to ``destination`` atomically."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pipeline-", dir=parent)
    try:
        shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(STATE_DIR))
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return destination


def _init_ray():
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS, when set, names the cluster; otherwise Ray starts an embedded local one.
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            runtime_env={"env_vars": worker_env()},  # workers' thread policy (spatialdreamer.runtime)
        )
    return ray


def train(corpus: str, output: str, config: TrainConfig, ray_cfg: dict, verbose: bool = False) -> dict:
    """Run (or resume) the Ray Train job; returns a summary of the final checkpoint."""
    corpus = corpus if "://" in corpus else os.path.abspath(corpus)
    output = output if "://" in output else os.path.abspath(output)
    # fail fast, before any worker starts: the corpus must exist and the query select something
    dataset = StereoClipDataset(
        corpus, config.frames, config.size, query=config.query, stride=config.frame_stride
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
        name=RUN_NAME,
        storage_path=output,
        checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg["keep_checkpoints"]),
        failure_config=FailureConfig(max_failures=ray_cfg["max_failures"]),
    )
    log.info(
        "training %s on %d samples (%d clips) with %d workers%s",
        config.model,
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
        raise RuntimeError(f"training finished without a checkpoint under {output}/{RUN_NAME}")
    summary = {"checkpoint": result.checkpoint.path, "metrics": dict(result.metrics or {})}
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
        prog="python -m pipelines.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", required=True, help="corpus root written by pipelines.build_dataset")
    parser.add_argument("--output", required=True, help="run folder: checkpoints and the exported pipeline")
    parser.add_argument(
        "--config", default="tiny", help="tiny, base, full (pipelines/configs/train_*.yaml) or a YAML path"
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="training workers (one GPU each on GPU clusters)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="total optimizer steps (a rerun continues to this)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="samples per worker per step")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument(
        "--query", default=None, help="pandas query over the manifest, e.g. 'hole_ratio < 0.2'"
    )
    parser.add_argument(
        "--pretrained", default=None, help="SVD hub id/folder or a SpatialDreamer pipeline folder"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    tune_cpu_allocator()
    overrides = {
        "num_workers": args.num_workers,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "query": args.query,
        "pretrained": args.pretrained,
    }
    try:
        config, ray_cfg = load_config(args.config, overrides)
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
    print(f"trained to step {step}: loss {loss:.4f}")
    print(f"checkpoint: {summary['checkpoint']}")
    if "pipeline" in summary:
        print(f"pipeline:   {summary['pipeline']}  (SpatialDreamerPipeline.from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
