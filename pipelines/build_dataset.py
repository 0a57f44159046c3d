"""Build a self-supervised stereo training corpus from monocular videos (Ray Data).

    python -m pipelines.build_dataset --input SRC --output DST [--config demo] [--depth-model ID]

SRC: a folder, glob or video, or a CSV/Parquet input manifest with a ``path`` column. SRC and
DST may be local paths or pyarrow URIs (s3://, gs://, ...). Runs on a local embedded Ray unless
RAY_ADDRESS names a cluster. Rerunning resumes: only missing clips are made; a finished corpus
is left as it is; --overwrite rebuilds it.

    list sources                                                          driver
    ─► plan:    keyframe-aligned segments of long videos (index only)      driver threads
    ─► split:   probe, decode its range, shot cuts, clips (uint8)          CPU task per segment
    ─► prepare: scores + filters, rgb encode, DIS flow once per pair       CPU task per clip
    ─► dvg:     depth (batched, fp16), warp, warp-back, masks              GPU actor pool
    ─► write:   encode views, lossless masks/disparity, row record         CPU task per clip
    ─► pack:    each segment's clips → one tar + one manifest part,        CPU task per video
                the video's failures part                                  (driver threads on a one-node Ray)
    ─► near-duplicates (duplicates/), counts from Parquet footers          driver
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from pipelines.configs import CONFIG_DIR, read_config
from pipelines.ray_session import RayNoiseFilter, connect
from spatialdreamer.cli.help import HelpFormatter, add_verbose

if TYPE_CHECKING:  # the library loads torch: imported where used, so --help answers at once
    from spatialdreamer.corpus import CorpusConfig

_MANAGED_DIRS = ("manifest", "failures", "duplicates", "shards", "_rows", "_failures", "_videos", "_segments")
_MANAGED_FILES = ("_job.json", "_SUCCESS.json")
# A small block target makes every clip its own block (a clip is > 1 MiB at any useful size):
# the stages pipeline clip by clip, not video by video, and memory is bounded by a few clips per
# stage whatever the number or length of the videos. Measured on 2 cores: 1.16 vs 1.11 clips/s
# against 32 MiB blocks, with DVG starting on a video's first clip instead of after its last.
_BLOCK_BYTES = 1 * 2**20

log = logging.getLogger("pipelines.build_dataset")

# The corpus modules the driver uses, all imported before it joins Ray (the package's exports
# load on first use). A job submitted with `--working-dir` runs from files that Ray's
# runtime-env agent may unpack anew while the driver registers (seen on a two-node cluster:
# removed and downloaded again), and a module first imported in that moment is missing.
_DRIVER_MODULES = (
    *("config", "sources", "segments", "records", "dedupe"),
    *("split", "prepare", "dvg", "write", "pack"),
)


def corpus_configs() -> list[str]:
    """Names of the corpus configs in ``pipelines/configs`` (the train and eval ones are not)."""
    other = ("train_", "eval")
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith(other))


def load_config(name_or_path: str | None, overrides: dict | None = None) -> CorpusConfig:
    """A corpus config from ``pipelines/configs/<name>.yaml`` or a YAML path, with overrides."""
    from spatialdreamer.corpus import CorpusConfig

    known = corpus_configs()
    if name_or_path and not name_or_path.endswith((".yaml", ".yml")) and name_or_path not in known:
        raise FileNotFoundError(
            f"corpus config {name_or_path!r} not found (a YAML path or one of: {', '.join(known)})"
        )
    values = read_config(name_or_path, kind="corpus config")[1] if name_or_path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return CorpusConfig.from_dict(values)


def prepare_output(
    root: str, config: CorpusConfig, overwrite: bool = False, retry_failed: bool = False
) -> None:
    """Check that ``root`` is empty or a corpus of the same settings; clear it for --overwrite,
    forget failures for --retry-failed, and remove temporaries a killed run left behind."""
    from spatialdreamer.data import storage

    job_path = storage.join(root, "_job.json")
    if overwrite:
        for name in _MANAGED_DIRS:
            storage.remove_tree(storage.join(root, name))
        for name in _MANAGED_FILES:
            storage.delete_file(storage.join(root, name))
    elif storage.exists(job_path):
        previous = json.loads(storage.read_bytes(job_path))
        if previous.get("config_hash") != config.content_hash():
            raise ValueError(
                f"{root} was built with other settings (config hash {previous.get('config_hash')}, now "
                f"{config.content_hash()}); pass --overwrite to rebuild it or choose another --output"
            )
    if retry_failed:  # a video with failures is redone whole (its packs hold only its good clips)
        for vid in storage.list_dirs(storage.join(root, "_failures")):
            for folder in ("_failures", "_segments", "_rows", "manifest", "shards"):
                storage.remove_tree(storage.join(root, folder, vid))
            storage.delete_file(storage.join(root, "_videos", f"{vid}.json"))
            storage.delete_file(storage.join(root, "failures", f"part-{vid}.parquet"))
    removed = storage.remove_stale_temporaries(root)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    job = json.dumps(
        {"config": config.content(), "config_hash": config.content_hash()}, indent=2, sort_keys=True
    )
    if not storage.exists(job_path) or storage.read_bytes(job_path) != job.encode():
        storage.write_bytes(job_path, job.encode())


# System settings of the embedded Ray the job starts when no cluster is named (a cluster keeps
# its own). Ray kills a worker that has been idle for 1 s once there are more workers than CPUs;
# the stages' task workers idle for seconds at a time while the depth + DVG actor works, so each
# burst of tasks started fresh processes, and each re-imported torch, OpenCV, PyAV and kornia
# (2.2-3.2 CPU-s). Measured on 2 cores, 24 clips: 8 task worker processes and ~21 CPU-s of
# imports for ~7 CPU-s of split, prepare and write; kept idle for the job, 3 processes.
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}


def _init_ray(address: str | None = None, **init_kwargs):
    """Join the cluster ``address`` or RAY_ADDRESS names, else start an embedded local Ray
    (with :data:`LOCAL_SYSTEM_CONFIG`); ``init_kwargs`` go to ``ray.init``."""
    init_kwargs.setdefault("include_dashboard", False)
    return connect(address, local={"_system_config": dict(LOCAL_SYSTEM_CONFIG)}, **init_kwargs)


def _max_cluster_gpus() -> float | None:
    """GPUs the autoscaler may add (from the cluster's node groups); None without an autoscaler."""
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # no autoscaler config published (a fixed or local cluster)
        return None
    return float(limits.get("GPU", 0)) if limits else None


def choose_device(ray, config: CorpusConfig, sleep=time.sleep) -> tuple[str, str]:
    """``(device, reason)`` for the depth + DVG stage; never a silent drop to CPU.

    ``cpu``: CPU. ``cuda``: GPUs, waiting up to ``gpu_wait_s`` for an autoscaler to add them,
    else an error. ``auto``: GPUs if the cluster has them; if an autoscaler can add GPU nodes,
    asks for one and waits up to ``gpu_wait_s``; otherwise CPU, with the reason said.
    """
    if config.device == "cpu":
        return "cpu", "device: cpu in the config"
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus > 0:
        return "cuda", f"{gpus:g} GPUs in the cluster"
    can_add = (_max_cluster_gpus() or 0) > 0
    if config.device == "cuda" or can_add:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": max(config.gpus_per_dvg_actor, 0.01)}])
        deadline = time.monotonic() + float(config.gpu_wait_s)
        log.warning("waiting up to %g s for GPU workers to join the cluster", config.gpu_wait_s)
        while time.monotonic() < deadline:
            if ray.cluster_resources().get("GPU", 0) > 0:
                request_resources(bundles=[])
                return "cuda", "GPU workers joined the cluster"
            sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        request_resources(bundles=[])
        if config.device == "cuda":
            raise RuntimeError(
                f"device: cuda, but no GPU joined the cluster within {config.gpu_wait_s:g} s; "
                "add GPU workers, raise gpu_wait_s, or use device: auto|cpu"
            )
        return "cpu", f"no GPU joined the cluster within {config.gpu_wait_s:g} s: depth + DVG run on CPU"
    return "cpu", "the cluster has no GPU and cannot add one: depth + DVG run on CPU"


def _pool(size: int | None, num_cpus: float) -> dict:
    """Task-pool settings of a CPU stage: ``size`` None scales with the cluster's CPUs."""
    from ray.data import TaskPoolStrategy

    return {"compute": TaskPoolStrategy(size=size), "num_cpus": num_cpus}


# Ray Data 2.60 takes a stage's resources as named parameters (num_cpus, num_gpus, compute,
# ...) but has none for retries: bounded task retries (max_retries, retry_exceptions) and actor
# restarts (max_restarts, max_task_retries) still go through ``**ray_remote_args``, which warns
# that it is deprecated. Only these are passed that way, and the warning is silenced for them
# alone, where they are passed (tests/test_build_dataset_ray.py checks that Ray still has no
# named parameter for any of them).
RETRY_ARGS = ("max_retries", "retry_exceptions", "max_restarts", "max_task_retries")


def _task_retries(retries: int) -> dict:
    """A crash or a transient error is retried ``retries`` times, then the job stops."""
    from spatialdreamer.corpus import TransientError

    return {"max_retries": retries, "retry_exceptions": [TransientError]}


def _actor_retries(retries: int) -> dict:
    return {"max_restarts": retries, "max_task_retries": retries}


def _stage(method, fn, retry_args: dict, **named):
    """``method(fn, **named)`` (a Dataset map) with the retry settings Ray has no name for."""
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    unknown = set(retry_args) - set(RETRY_ARGS)
    if unknown:
        raise ValueError(f"pass {sorted(unknown)} as named parameters")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", RayDeprecationWarning)
        return method(fn, **named, **retry_args)


def _dvg_pool(ray, config: CorpusConfig, device: str) -> dict:
    """Actor-pool settings of depth + DVG: on CUDA one actor per GPU share, up to every GPU the
    cluster has or its autoscaler may add (``dvg_actors: [min, null]``), batches of
    ``dvg_batch_size`` clips; on CPU one clip per call, up to half the cluster's CPUs."""
    from ray.data import ActorPoolStrategy

    low, high = config.dvg_actors
    if device == "cuda":
        if high is None:
            gpus = max(ray.cluster_resources().get("GPU", 0), _max_cluster_gpus() or 0)
            high = max(low, int(gpus / max(config.gpus_per_dvg_actor, 1e-6)))
        return {
            "compute": ActorPoolStrategy(min_size=low, max_size=high),
            "batch_size": config.dvg_batch_size,
            "num_gpus": config.gpus_per_dvg_actor,
            "num_cpus": config.dvg_num_cpus,
        }
    if high is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        high = max(low, int(cpus / max(config.dvg_num_cpus, 1e-6)) // 2)
    return {
        "compute": ActorPoolStrategy(min_size=low, max_size=high),
        "batch_size": 1,
        "num_cpus": config.dvg_num_cpus,
    }


def run_stages(
    pending: list[dict], root: str, config: CorpusConfig, ray_address: str | None = None
) -> tuple[int, int, str]:
    """The Ray Data chain over the videos still to do; returns ``(clips, frames, device)``.

    Planning (a few index seeks per video, :func:`pending_segments`) comes first, so that
    every segment of a long video becomes a split task of its own. Then the chain streams end to end
    (no groupby, sort or materialize): memory holds a few blocks per stage. Last, each video's
    finished segments are packed by tasks of their own.
    """
    ray = _init_ray(ray_address)
    from ray.data import DataContext

    from spatialdreamer.corpus import (
        DepthDVGStage,
        TransientError,
        prepare_clips,
        split_video,
        write_clip_stage,
    )

    context = DataContext.get_current()
    context.target_max_block_size = _BLOCK_BYTES
    context.enable_progress_bars = True
    context.actor_task_retry_on_errors = [TransientError]

    device, reason = choose_device(ray, config)
    print(f"build_dataset: depth + DVG on {device} ({reason})", file=sys.stderr)
    dvg = _dvg_pool(ray, config, device)
    tasks, actors = _task_retries(config.max_retries), _actor_retries(config.max_retries)

    segments = pending_segments(pending, root, config)
    clips = frames = 0
    if segments:
        ds = ray.data.from_items(segments, override_num_blocks=len(segments))
        ds = _stage(
            ds.flat_map,
            split_video,
            tasks,
            fn_kwargs={"root": root, "config": config},
            **_pool(config.split_tasks, config.split_num_cpus),
        )
        ds = _stage(
            ds.map_batches,
            prepare_clips,
            tasks,
            fn_kwargs={"root": root, "config": config},
            batch_size=1,
            **_pool(config.prepare_tasks, config.prepare_num_cpus),
        )
        ds = _stage(
            ds.map_batches,
            DepthDVGStage,
            actors,
            fn_constructor_kwargs={"config": config, "root": root, "device": device},
            **dvg,
        )
        ds = _stage(
            ds.map_batches,
            write_clip_stage,
            tasks,
            fn_kwargs={"root": root, "config": config},
            batch_size=1,
            **_pool(config.write_tasks, config.write_num_cpus),
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            clips += len(batch["clip_id"])
            frames += int(batch["num_frames"].sum())
    return clips, frames, device


def pack_videos(videos: list[str], root: str, config: CorpusConfig, in_process: bool = False) -> int:
    """Pack the finished segments of ``videos``; returns the clips packed.

    On a cluster, a Ray task per video, on the workers the stages warmed up (plain tasks start in
    milliseconds, a Ray Data pass in seconds). On a Ray of one node, this machine (the embedded
    Ray), in the driver's threads: a task there would run on the same CPUs and disks, and every
    task beyond the warm workers starts a process that imports torch first (~2.5 CPU-s, for
    ~0.02 CPU-s of packing per video). ``in_process`` (no Ray) packs in the driver too.
    """
    if not videos:
        return 0
    from spatialdreamer.corpus import TransientError, pack_video

    rows = [{"video_id": vid} for vid in videos]
    ray = None if in_process else _init_ray(None)
    if ray is None or _single_local_node(ray):
        with ThreadPoolExecutor(max_workers=min(4, len(rows))) as pool:
            return sum(done["packed"] for done in pool.map(lambda row: pack_video(row, root, config), rows))
    task = ray.remote(
        num_cpus=config.write_num_cpus, max_retries=config.max_retries, retry_exceptions=[TransientError]
    )(pack_video)
    config_ref = ray.put(config)
    return sum(done["packed"] for done in ray.get([task.remote(row, root, config_ref) for row in rows]))


def _single_local_node(ray) -> bool:
    """Whether the Ray this driver is connected to is one node: the one the driver runs on."""
    alive = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
    return alive == [ray.get_runtime_context().get_node_id()]


def pending_segments(pending: list[dict], root: str, config: CorpusConfig) -> list[dict]:
    """The segments still to split of the ``pending`` videos, planned in parallel threads: a
    plan reads only a container's index (range reads on object storage), and is recorded so a
    rerun does not open the video again."""
    from spatialdreamer.corpus import plan_video

    with ThreadPoolExecutor(max_workers=16) as pool:
        planned = list(pool.map(lambda row: plan_video(row, root, config), pending))
    return [segment for rows in planned for segment in rows]


def pending_sources(sources: list[dict], root: str, config: CorpusConfig) -> list[dict]:
    """The sources with work left (checked in parallel: a few small reads per video)."""
    from spatialdreamer.corpus import video_is_done

    with ThreadPoolExecutor(max_workers=16) as pool:
        digest = config.content_hash()
        done = list(pool.map(lambda row: video_is_done(root, row["video_id"], digest), sources))
    return [row for row, finished in zip(sources, done, strict=True) if not finished]


def build(
    source: str,
    root: str,
    config: CorpusConfig,
    overwrite: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    in_process: bool = False,
    ray_address: str | None = None,
) -> dict:
    """Build (or resume) the corpus at ``root`` from ``source``; returns the summary it prints.

    ``in_process`` runs the same stages in a plain loop without Ray (debugging, benchmarks);
    ``ray_address`` ("local" = embedded) overrides RAY_ADDRESS when Ray is not started yet.
    """
    from spatialdreamer.corpus import FILTER_STAGE, LIST_STAGE, find_sources, mark_duplicates, record_failure
    from spatialdreamer.data import storage
    from spatialdreamer.data.manifest import compact_video, count_rows, load_manifest

    began = time.perf_counter()
    for name in _DRIVER_MODULES:
        importlib.import_module(f"spatialdreamer.corpus.{name}")
    config = config.resolved()  # shot_detector: auto → what this machine has, for every worker
    listing = find_sources(source, exclude=[root])
    sources = listing.videos
    if limit is not None:
        sources = sources[: max(0, limit)]
    if not sources:
        reasons = "; ".join(f"{s['path']} {s['reason']}" for s in listing.skipped[:3])
        raise ValueError(f"no videos found in {source}" + (f" ({reasons})" if reasons else ""))
    prepare_output(root, config, overwrite=overwrite, retry_failed=retry_failed)
    for entry in listing.skipped:  # every input left out is a row of the failures table
        record = record_failure(root, entry["path"], LIST_STAGE, entry["reason"])
        compact_video(root, "failures", record["video_id"])  # found here: its part is written here
    pending = pending_sources(sources, root, config)
    clips = frames = 0
    device = "cpu"
    if pending and in_process:
        from spatialdreamer.corpus import build_in_process

        device = "cpu" if config.device == "auto" else config.device
        clips, frames = build_in_process(pending, root, config, device=device)
    elif pending:
        clips, frames, device = run_stages(pending, root, config, ray_address)
    # what is left to pack: this run's videos, and any a killed run wrote but did not pack
    unpacked = sorted(
        {row["video_id"] for row in pending} | set(storage.list_dirs(storage.join(root, "_rows")))
    )
    pack_videos(unpacked, root, config, in_process=in_process)
    total_clips = count_rows(root, "clips")
    total_failures = count_rows(root, "failures")  # each video's part was written by its pack task
    duplicates = mark_duplicates(root, config.dedupe_bits) if total_clips else 0
    failures = load_manifest(root, table="failures", columns=["video_id", "clip_id", "stage"])
    filtered = int((failures["stage"] == FILTER_STAGE).sum())
    whole = failures[failures["clip_id"].isna() & (failures["stage"] != LIST_STAGE)]
    failed = len(set(whole["video_id"]) & {row["video_id"] for row in sources})
    elapsed = time.perf_counter() - began
    summary = {
        "inputs": len(sources) + len(listing.skipped),
        "inputs_not_videos": len(listing.skipped),
        "videos": len(sources),
        "videos_ok": len(sources) - failed,
        "videos_failed": failed,
        "videos_processed": len(pending),
        "videos_already_done": len(sources) - len(pending),
        "clips_written": clips,
        "frames_written": frames,
        "clips_in_corpus": total_clips,
        "clips_filtered": filtered,
        "clips_duplicate": duplicates,
        "failures": total_failures - filtered,
        "device": device,
        "wall_seconds": round(elapsed, 2),
        "clips_per_second": round(clips / elapsed, 3) if elapsed > 0 else 0.0,
        "frames_per_second": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "config_hash": config.content_hash(),
    }
    success = storage.join(root, "_SUCCESS.json")
    if pending or not storage.exists(success):  # a rerun with nothing to do leaves the corpus untouched
        storage.write_bytes(success, json.dumps(summary, indent=2).encode())
    return summary


def format_summary(summary: dict) -> str:
    return "\n".join(f"{key:>20}: {value}" for key, value in summary.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_dataset", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--input", required=True, help="folder, glob, video, or CSV/Parquet manifest (local or URI)"
    )
    parser.add_argument("--output", required=True, help="corpus root (local or URI)")
    parser.add_argument(
        "--config",
        default="default",
        help=f"corpus config: one of {', '.join(corpus_configs())} (pipelines/configs), or a YAML path",
    )
    parser.add_argument(
        "--depth-model",
        default=None,
        help="override the config's depth model (Hugging Face id, local path, or parallax)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the corpus at --output and rebuild it"
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="forget recorded failures and try them again"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N source videos")
    parser.add_argument(
        "--in-process", action="store_true", help="run the stages in one process, without Ray"
    )
    add_verbose(parser, True, "log details, show Ray's own messages and tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from spatialdreamer.corpus import TransientError
    from spatialdreamer.data.manifest import load_manifest, summarize_manifest
    from spatialdreamer.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    try:
        with RayNoiseFilter(verbose=args.verbose):
            config = load_config(args.config, {"depth_model": args.depth_model})
            summary = build(
                args.input,
                args.output,
                config,
                overwrite=args.overwrite,
                retry_failed=args.retry_failed,
                limit=args.limit,
                in_process=args.in_process,
            )
        clips = load_manifest(args.output)
        failures = load_manifest(args.output, table="failures")
    except KeyboardInterrupt:
        print("build_dataset: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        lines = [line for line in str(exc).splitlines() if line.strip()]
        transient = [line for line in lines if "TransientError" in line]
        if isinstance(exc, TransientError) or transient:  # Ray wraps the stage's error
            detail = (transient or lines or [type(exc).__name__])[-1].strip()
            print(
                f"build_dataset: transient error after bounded retries (not recorded as a failure of "
                f"any video; rerun to resume): {detail}",
                file=sys.stderr,
            )
            return 75
        message = lines[0] if lines else type(exc).__name__
        print(f"build_dataset: error: {message}", file=sys.stderr)
        return 1
    print("\n== corpus build ==")
    print(format_summary(summary))
    print("\n== manifest ==")
    print(summarize_manifest(clips, failures))
    print(f"\ncorpus at {args.output}; load it with spatialdreamer.data.load_manifest({args.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
