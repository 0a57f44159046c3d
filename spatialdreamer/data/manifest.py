"""The corpus manifest (one row per clip) and failures table: schema, compaction, loading.

Layout of a corpus root::

    manifest/part-<video_id>.parquet   clips table, one row per clip (what users query)
    failures/part-<video_id>.parquet   what could not be used: path, stage, error
    shards/<video_id>/<clip_id>/       the clip's videos and lossless masks/disparity
    _rows/, _failures/, _videos/       per-clip / per-failure / per-video records the job writes
                                       as it goes; the tables are compacted from them, so a
                                       crashed job resumes from exactly what was finished
    _job.json, _SUCCESS.json           the build's settings; the last run's summary
"""

from __future__ import annotations

import io
import json
import os
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from spatialdreamer.data import storage

__all__ = [
    "CLIP_SCHEMA",
    "FAILURE_SCHEMA",
    "compact_table",
    "describe_corpus",
    "format_failures",
    "load_manifest",
    "read_records",
    "summarize_manifest",
]

CLIP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("shot_id", pa.int32()),
        ("source_path", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("num_frames", pa.int32()),
        ("start_time", pa.float64()),
        ("end_time", pa.float64()),
        ("duration", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("depth_model", pa.string()),
        ("budget", pa.float32()),
        ("disparity_p05", pa.float32()),
        ("disparity_p50", pa.float32()),
        ("disparity_p95", pa.float32()),
        ("depth_p05", pa.float32()),
        ("depth_p50", pa.float32()),
        ("depth_p95", pa.float32()),
        ("depth_edges", pa.float32()),
        ("hole_ratio", pa.float32()),
        ("right_hole_ratio", pa.float32()),
        ("motion_score", pa.float32()),
        ("camera_motion", pa.float32()),
        ("brightness", pa.float32()),
        ("sharpness", pa.float32()),
        ("black_border", pa.float32()),
        ("phash", pa.string()),
        ("rgb_path", pa.string()),
        ("right_path", pa.string()),
        ("right_mask_path", pa.string()),
        ("back_path", pa.string()),
        ("back_mask_path", pa.string()),
        ("disparity_path", pa.string()),
        ("config_hash", pa.string()),
        ("created_time", pa.timestamp("us", tz="UTC")),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("created_time", pa.timestamp("us", tz="UTC")),
    ]
)

_TABLES = {"clips": ("manifest", "_rows", CLIP_SCHEMA), "failures": ("failures", "_failures", FAILURE_SCHEMA)}
_SORT = {"clips": ["clip_id"], "failures": ["clip_id", "stage", "path"]}


def read_records(root: str, folder: str) -> list[dict]:
    """All JSON records under ``root/folder`` (recursively), read in parallel."""
    paths = storage.list_files(storage.join(root, folder), (".json",))
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: json.loads(storage.read_bytes(p)), paths))


def _to_table(records: list[dict], schema: pa.Schema, sort_keys: list[str]) -> pa.Table:
    frame = pd.DataFrame.from_records(records, columns=schema.names)
    frame = frame.sort_values(sort_keys, kind="stable", na_position="first").reset_index(drop=True)
    frame["created_time"] = pd.to_datetime(frame["created_time"], utc=True, format="ISO8601")
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _compact_video(root: str, table: str, vid: str) -> int:
    folder, records_folder, schema = _TABLES[table]
    part = storage.join(root, folder, f"part-{vid}.parquet")
    paths = storage.list_files(storage.join(root, records_folder, vid), (".json",), recursive=False)
    if not paths:
        storage.delete_file(part)
        return 0
    if storage.exists(part):
        fs, inner = storage.open_filesystem(part)
        with fs.open_input_file(inner) as handle:
            if pq.ParquetFile(handle).metadata.num_rows == len(paths):  # records are only ever added
                return len(paths)
    records = [json.loads(storage.read_bytes(p)) for p in paths]
    buffer = io.BytesIO()
    pq.write_table(_to_table(records, schema, _SORT[table]), buffer, compression="zstd")
    storage.write_bytes(part, buffer.getvalue())
    return len(records)


def compact_table(root: str, table: str = "clips", workers: int = 8) -> int:
    """Bring ``manifest/`` (or ``failures/``) up to date with the per-record files; returns the
    table's row count.

    One Parquet part per source video (``part-<video_id>.parquet``, rows sorted by ID), built
    from that video's records alone: memory holds one video's rows whatever the corpus size,
    parts already up to date are not rewritten, and a resumed job ends with the same parts as
    an uninterrupted one.
    """
    if table not in _TABLES:
        raise ValueError(f"table must be one of {sorted(_TABLES)}, got {table!r}")
    folder, records_folder, _ = _TABLES[table]
    videos = set(storage.list_dirs(storage.join(root, records_folder)))
    for path in storage.list_files(storage.join(root, folder), (".parquet",), recursive=False):
        name = os.path.basename(path)
        if name.startswith("part-"):
            videos.add(name[len("part-") : -len(".parquet")])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(lambda vid: _compact_video(root, table, vid), sorted(videos)))


def _table_location(path: str, table: str) -> str | None:
    folder = _TABLES[table][0]
    if storage.exists(storage.join(path, folder)):
        return storage.join(path, folder)
    if table == "clips" and path.lower().endswith(".parquet") and storage.exists(path):
        return path
    if os.path.basename(path.rstrip("/")) == folder and storage.exists(path):
        return path
    return None


def load_manifest(
    path: str | os.PathLike,
    table: str = "clips",
    columns: list[str] | None = None,
    filters: list | None = None,
) -> pd.DataFrame:
    """The corpus manifest (``table="clips"``, one row per clip) or its failures
    (``table="failures"``: path, video_id, clip_id, stage, error) as a DataFrame sorted by ID.

    ``path`` is a corpus root (local or any pyarrow URI), its ``manifest/`` folder or a Parquet
    part. ``columns`` and ``filters`` (pyarrow DNF, e.g. ``[("hole_ratio", "<", 0.05)]``) are
    pushed down to Parquet, so a query reads only what it needs. A corpus with no failures has an
    empty failures table. Example::

        df = load_manifest("corpus/")
        calm = df[(df.hole_ratio < 0.05) & (df.motion_score < 2)]
    """
    if table not in _TABLES:
        raise ValueError(f"table must be one of {sorted(_TABLES)}, got {table!r}")
    folder, _, schema = _TABLES[table]
    path = os.fspath(path)
    if columns is not None:
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise ValueError(
                f"unknown {table} columns: {', '.join(unknown)} (known: {', '.join(schema.names)})"
            )
    location = _table_location(path, table)
    if location is None:
        built = storage.exists(storage.join(path, "_job.json")) or storage.exists(
            storage.join(path, "manifest")
        )
        if table == "failures" and built:
            empty = schema.empty_table()
            return (empty.select(columns) if columns else empty).to_pandas()
        raise FileNotFoundError(
            f"no {table} table under {path}: expected {storage.join(path, folder)} "
            "(build one with: python -m pipelines.build_dataset --input SRC --output DST)"
        )
    fs, inner = storage.open_filesystem(location)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet", schema=schema)
    expression = pq.filters_to_expression(filters) if filters else None
    frame = dataset.to_table(columns=columns, filter=expression).to_pandas()
    keys = [k for k in _SORT[table] if k in frame.columns]
    if keys and len(frame):
        frame = frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)
    return frame


def summarize_manifest(clips: pd.DataFrame, failures: pd.DataFrame | None = None) -> str:
    """A few lines people read after a job: counts, durations, quality spread, failures."""
    lines = []
    if len(clips) == 0:
        lines.append("clips: 0")
    else:
        seconds = float(clips["duration"].sum())
        length = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        lines.append(
            f"clips: {len(clips)} from {clips['video_id'].nunique()} videos, "
            f"{int(clips['num_frames'].sum())} frames, {length}"
        )
        sizes = sorted(set(zip(clips.width, clips.height, strict=True)))
        lines.append(f"resolution: {', '.join(f'{w}x{h}' for w, h in sizes)}")
        lines.append(f"depth models: {', '.join(sorted(clips['depth_model'].unique()))}")
        for column in ("hole_ratio", "depth_edges", "camera_motion", "sharpness"):
            q = clips[column].quantile([0.05, 0.5, 0.95])
            lines.append(f"{column}: p05 {q.iloc[0]:.3f}  median {q.iloc[1]:.3f}  p95 {q.iloc[2]:.3f}")
        lines.append(f"sources: {', '.join(f'{k} ({v})' for k, v in clips['source'].value_counts().items())}")
    if failures is not None:
        filtered = failures[failures["stage"] == "filter"] if len(failures) else failures
        failures = failures[failures["stage"] != "filter"] if len(failures) else failures
        if len(filtered):
            lines.append(f"filtered by quality thresholds: {len(filtered)} clips")
        listed = int((failures["stage"] == "list").sum()) if len(failures) else 0
        videos = int(failures["clip_id"].isna().sum()) - listed if len(failures) else 0
        not_videos = f", {listed} inputs that are not videos" if listed else ""
        lines.append(
            f"failures: {len(failures)} ({videos} whole videos, "
            f"{len(failures) - videos - listed} clips{not_videos})"
        )
        for stage, count in failures["stage"].value_counts().sort_index().items() if len(failures) else []:
            example = failures.loc[failures["stage"] == stage, "error"].iloc[0]
            lines.append(f"  {stage}: {count}  e.g. {_shorten(example, 100)}")
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters (never mid-word)."""
    return textwrap.shorten(text, width, placeholder=" ...") if len(text) > width else text


def format_failures(failures: pd.DataFrame, head: int | None = None) -> str:
    """The failures one per entry, reasons in full: the path, then the stage and the reason."""
    shown = failures if head is None else failures.head(head)
    lines = [f"{row.path}\n    {row.stage}: {row.error}" for row in shown.itertuples()]
    if len(shown) < len(failures):
        lines.append(f"... and {len(failures) - len(shown)} more (--head N shows more)")
    return "\n".join(lines)


def describe_corpus(root: str, query: str | None = None, failures: bool = False, head: int = 10) -> str:
    """What ``spatialdreamer manifest`` prints: the last build's figures, the manifest summary,
    and optionally the clips matching a pandas ``query`` or the failures."""
    root = os.fspath(root)
    clips = load_manifest(root)
    failed = load_manifest(root, table="failures")
    lines = [f"corpus: {root}"]
    success = storage.join(root, "_SUCCESS.json")
    if storage.exists(success):
        last = json.loads(storage.read_bytes(success))
        skipped = f", {last['inputs_not_videos']} inputs not videos" if last.get("inputs_not_videos") else ""
        lines.append(
            f"last build: {last.get('videos')} videos ({last.get('videos_failed', 0)} failed{skipped}), "
            f"{last.get('clips_written')} clips written in {last.get('wall_seconds')} s "
            f"({last.get('frames_per_second')} frames/s), config {last.get('config_hash')}"
        )
    lines.append(summarize_manifest(clips, failed))
    if query:
        try:
            matches = clips.query(query)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(
                f"bad --query {query!r}: {reason}; the columns are: {', '.join(clips.columns)}"
            ) from exc
        lines.append(f"\nquery {query!r}: {len(matches)} of {len(clips)} clips")
        if len(matches):
            shown = matches[["clip_id", "source", "hole_ratio", "motion_score", "disparity_p95", "rgb_path"]]
            lines.append(shown.head(head).to_string(index=False))
    if failures and len(failed):
        lines.append("")
        lines.append(format_failures(failed, head))
    return "\n".join(lines)
