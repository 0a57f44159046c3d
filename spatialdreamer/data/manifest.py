"""The corpus manifest (one row per clip) and failures table: schema, parts, loading.

Layout of a corpus root::

    manifest/<video_id>/part-<segment>.parquet  clips table, one part per video segment
    failures/part-<video_id>.parquet            what could not be used: path, stage, error (one
                                                part per video, written by its pack task)
    duplicates/part-0.parquet                   clip_id → duplicate_of (near-duplicates)
    shards/<video_id>/<segment>.tar             the segment's clips: videos, lossless masks/disparity
    _rows/, _failures/, _videos/, _segments/    records the job writes as it goes, so a crashed
                                                job resumes from exactly what was finished
    _job.json, _SUCCESS.json                    the build's settings; the last run's summary

The clips table is a partitioned Parquet dataset: each part is written once, by the task that
packs its segment, and never merged; readers open the folder as one dataset. The failures
table is partitioned the same way, by video: the video's pack task writes its part from the
video's records, so the driver never reads or merges the table.
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
    "DUPLICATE_SCHEMA",
    "FAILURE_SCHEMA",
    "compact_table",
    "compact_video",
    "count_rows",
    "describe_corpus",
    "failures_part_is_current",
    "format_failures",
    "load_manifest",
    "manifest_part",
    "read_records",
    "summarize_manifest",
    "to_clip_table",
]

CLIP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("segment", pa.int32()),
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
        ("shard", pa.string()),
        ("shard_offset", pa.int64()),
        ("shard_size", pa.int64()),
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

DUPLICATE_SCHEMA = pa.schema([("clip_id", pa.string()), ("duplicate_of", pa.string())])

_TABLES = {
    "clips": ("manifest", "_rows", CLIP_SCHEMA),
    "failures": ("failures", "_failures", FAILURE_SCHEMA),
    "duplicates": ("duplicates", None, DUPLICATE_SCHEMA),
}
_SORT = {"clips": ["clip_id"], "failures": ["clip_id", "stage", "path"], "duplicates": ["clip_id"]}


def manifest_part(vid: str, segment: int) -> str:
    """The clips-table part of one video segment, relative to the corpus root."""
    return f"manifest/{vid}/part-{segment:04d}.parquet"


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


def to_clip_table(records: list[dict]) -> pa.Table:
    """Clip records (dicts with the :data:`CLIP_SCHEMA` columns) → a clips-table part, by ID."""
    return _to_table(records, CLIP_SCHEMA, _SORT["clips"])


def _failure_records(root: str, vid: str) -> list[str]:
    return storage.list_files(storage.join(root, "_failures", vid), (".json",), recursive=False)


def _part_rows(part: str) -> int | None:
    """Rows of a Parquet part from its footer; ``None`` if it does not exist."""
    if not storage.exists(part):
        return None
    fs, inner = storage.open_filesystem(part)
    with fs.open_input_file(inner) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def failures_part_is_current(root: str, vid: str) -> bool:
    """Whether ``failures/part-<vid>.parquet`` holds every failure record of the video (no
    records: no part). Records are only ever added, so a row count that matches is current."""
    part = storage.join(root, "failures", f"part-{vid}.parquet")
    records = len(_failure_records(root, vid))
    rows = _part_rows(part)
    return rows is None if records == 0 else rows == records


def compact_video(root: str, table: str, vid: str) -> int:
    """Bring one video's part of the failures table up to date with its records; returns its
    row count. The corpus job calls it in the task that packs the video (and on the driver only
    for inputs that are not videos), never over the whole table. (Clips are not compacted: the
    corpus job packs them, segment by segment.)"""
    if table != "failures":
        raise ValueError(f"only the failures table is compacted from records, not {table!r}")
    folder, _, schema = _TABLES[table]
    part = storage.join(root, folder, f"part-{vid}.parquet")
    paths = _failure_records(root, vid)
    if not paths:
        storage.delete_file(part)
        return 0
    if _part_rows(part) == len(paths):  # records are only ever added
        return len(paths)
    records = [json.loads(storage.read_bytes(p)) for p in paths]
    buffer = io.BytesIO()
    pq.write_table(_to_table(records, schema, _SORT[table]), buffer, compression="zstd")
    storage.write_bytes(part, buffer.getvalue())
    return len(records)


def compact_table(root: str, table: str = "failures", workers: int = 8) -> int:
    """Bring all of ``failures/`` up to date with the per-record files; returns the table's row
    count. A repair tool: the corpus job keeps each video's part current in the video's pack task.

    One Parquet part per source video (``part-<video_id>.parquet``, rows sorted by ID), built
    from that video's records alone: memory holds one video's rows whatever the corpus size,
    parts already up to date are not rewritten, and a resumed job ends with the same parts as
    an uninterrupted one.
    """
    if table != "failures":
        raise ValueError(f"only the failures table is compacted from records, not {table!r}")
    folder, records_folder, _ = _TABLES[table]
    videos = set(storage.list_dirs(storage.join(root, records_folder)))
    for path in storage.list_files(storage.join(root, folder), (".parquet",), recursive=False):
        name = os.path.basename(path)
        if name.startswith("part-"):
            videos.add(name[len("part-") : -len(".parquet")])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(lambda vid: compact_video(root, table, vid), sorted(videos)))


def count_rows(root: str, table: str = "clips") -> int:
    """Rows of a table, from the Parquet footers alone (no row is read)."""
    location = _table_location(os.fspath(root), table)
    if location is None:
        return 0
    fs, inner = storage.open_filesystem(location)
    return pads.dataset(inner, filesystem=fs, format="parquet", schema=_TABLES[table][2]).count_rows()


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
    empty failures table. The clips table carries ``duplicate_of`` (from ``duplicates/``: the
    clip of another video it nearly repeats, else null). Example::

        df = load_manifest("corpus/")
        calm = df[(df.hole_ratio < 0.05) & (df.motion_score < 2)]
    """
    if table not in _TABLES:
        raise ValueError(f"table must be one of {sorted(_TABLES)}, got {table!r}")
    folder, _, schema = _TABLES[table]
    path = os.fspath(path)
    joined = table == "clips" and (columns is None or "duplicate_of" in columns)
    if columns is not None:
        columns = [c for c in columns if not (table == "clips" and c == "duplicate_of")]
        if joined and "clip_id" not in columns:
            columns = ["clip_id", *columns]
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
        if built:
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
    if joined:
        frame = _with_duplicates(path, frame)
    keys = [k for k in _SORT[table] if k in frame.columns]
    if keys and len(frame):
        frame = frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)
    return frame


def _with_duplicates(path: str, frame: pd.DataFrame) -> pd.DataFrame:
    location = _table_location(path, "duplicates")
    if location is None:
        return frame.assign(duplicate_of=pd.Series([None] * len(frame), dtype=object, index=frame.index))
    fs, inner = storage.open_filesystem(location)
    duplicates = pads.dataset(inner, filesystem=fs, format="parquet", schema=DUPLICATE_SCHEMA).to_table()
    frame = frame.merge(duplicates.to_pandas(), on="clip_id", how="left")
    frame["duplicate_of"] = frame["duplicate_of"].astype(object).where(frame["duplicate_of"].notna(), None)
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
