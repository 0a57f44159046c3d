"""Build a self-supervised stereo training corpus from monocular videos (Ray Data).

    python -m pipelines.build_dataset --input SRC --output DST [--config demo] [--depth-model ID]

SRC: a folder or glob of videos, or a CSV/Parquet input manifest with a ``path`` column.
SRC and DST may be local paths or pyarrow URIs (s3://, gs://, ...). Runs on a local embedded
Ray unless RAY_ADDRESS names a cluster. Rerunning resumes: only missing clips are made.

    list sources ─► split (decode, cuts, clips) ─► depth + DVG (actor pool, GPU if any) ─► write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from spatialdreamer.data import storage
from spatialdreamer.data.corpus import (
    CorpusConfig,
    DepthDVGStage,
    list_sources,
    split_video,
    write_clip_stage,
)
from spatialdreamer.data.manifest import compact_table, load_manifest, summarize_manifest
from spatialdreamer.runtime import tune_cpu_allocator

CONFIG_DIR = Path(__file__).parent / "configs"
_MANAGED = ("manifest", "failures", "shards", "_rows", "_failures", "_videos", "_job.json", "_SUCCESS.json")


def load_config(name_or_path: str | None, overrides: dict) -> CorpusConfig:
    """A config from ``pipelines/configs/<name>.yaml`` or a YAML path, with overrides applied."""
    values: dict = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.exists():
            path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise FileNotFoundError(f"config {name_or_path!r} not found (a YAML path or one of: {known})")
        values = yaml.safe_load(path.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return CorpusConfig.from_dict(values)


def _prepare_output(root: str, config: CorpusConfig, overwrite: bool) -> None:
    job_path = storage.join(root, "_job.json")
    if overwrite:
        for name in _MANAGED:
            target = storage.join(root, name)
            if name.endswith(".json"):
                if storage.exists(target):
                    fs, inner = storage.open_filesystem(target)
                    fs.delete_file(inner)
            else:
                storage.remove_tree(target)
    elif storage.exists(job_path):
        previous = json.loads(storage.read_bytes(job_path))
        if previous.get("config_hash") != config.content_hash():
            raise ValueError(
                f"{root} was built with other settings (config hash {previous.get('config_hash')}, now "
                f"{config.content_hash()}); pass --overwrite to rebuild it or choose another --output"
            )
    job = {"config": config.content(), "config_hash": config.content_hash()}
    storage.write_bytes(job_path, json.dumps(job, indent=2, sort_keys=True).encode())


def build(
    source: str, root: str, config: CorpusConfig, overwrite: bool = False, limit: int | None = None
) -> dict:
    """Run the job; returns the summary it prints."""
    import ray

    began = time.perf_counter()
    _prepare_output(root, config, overwrite)
    sources = list_sources(source)
    if limit is not None:
        sources = sources[:limit]
    if not sources:
        raise ValueError(f"no videos found in {source}")

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    dvg_resources = {"num_gpus": config.gpus_per_dvg_actor} if gpus else {"num_cpus": 1}

    ds = ray.data.from_items(sources, override_num_blocks=len(sources))
    ds = ds.flat_map(
        split_video,
        fn_kwargs={"root": root, "config": config},
        num_cpus=1,
        concurrency=config.split_concurrency,
    )
    ds = ds.map_batches(
        DepthDVGStage,
        fn_constructor_kwargs={"config": config, "root": root, "device": "cuda" if gpus else "cpu"},
        batch_size=1,
        concurrency=tuple(config.dvg_concurrency),
        **dvg_resources,
    )
    ds = ds.map_batches(
        write_clip_stage,
        fn_kwargs={"root": root, "config": config},
        batch_size=1,
        num_cpus=1,
        concurrency=config.write_concurrency,
    )
    clips = frames = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        clips += len(batch["clip_id"])
        frames += int(batch["num_frames"].sum())

    total_clips = compact_table(root, "clips")
    total_failures = compact_table(root, "failures")
    elapsed = time.perf_counter() - began
    summary = {
        "videos": len(sources),
        "clips_written": clips,
        "frames_written": frames,
        "clips_in_corpus": total_clips,
        "failures": total_failures,
        "wall_seconds": round(elapsed, 2),
        "frames_per_second": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "config_hash": config.content_hash(),
    }
    storage.write_bytes(storage.join(root, "_SUCCESS.json"), json.dumps(summary, indent=2).encode())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", required=True, help="folder, glob, video, or CSV/Parquet manifest (local or URI)"
    )
    parser.add_argument("--output", required=True, help="corpus root (local or URI)")
    parser.add_argument("--config", default="default", help="config name in pipelines/configs or a YAML path")
    parser.add_argument(
        "--depth-model", default=None, help="override the config's depth model (id, path, parallax)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the corpus at --output and rebuild it"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N source videos")
    parser.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    tune_cpu_allocator()
    try:
        config = load_config(args.config, {"depth_model": args.depth_model})
        summary = build(args.input, args.output, config, overwrite=args.overwrite, limit=args.limit)
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"build_dataset: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    print("\n== corpus build ==")
    for key, value in summary.items():
        print(f"{key:>18}: {value}")
    clips = load_manifest(args.output)
    failures = load_manifest(args.output, table="failures")
    print(summarize_manifest(clips, failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
