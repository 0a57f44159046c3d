"""The corpus manifest (one row per clip) and failures table: schema, compaction, loading.

Layout of a corpus root::

    manifest/part-00000.parquet   clips table, one row per clip (what users query)
    failures/part-00000.parquet   what could not be used: path, stage, error
    shards/<video_id>/<clip_id>/  the clip's videos and lossless masks/disparity
    _rows/, _failures/, _videos/  per-clip / per-failure / per-video records the job writes as it
                                  goes; the tables above are compacted from them, so a crashed
                                  job resumes from exactly what was finished
"""

from __future__ import annotations

import io
import json
import os
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
        ("hole_ratio", pa.float32()),
        ("right_hole_ratio", pa.float32()),
        ("motion_score", pa.float32()),
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


def read_records(root: str, folder: str) -> list[dict]:
    """All JSON records under ``root/folder`` (recursively), read in parallel."""
    paths = storage.list_files(storage.join(root, folder), (".json",))
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda p: json.loads(storage.read_bytes(p)), paths))


def _to_table(records: list[dict], schema: pa.Schema, sort_key: str) -> pa.Table:
    frame = pd.DataFrame.from_records(records, columns=schema.names)
    if len(frame):
        frame = frame.sort_values([sort_key, "created_time"], kind="stable").reset_index(drop=True)
    frame["created_time"] = pd.to_datetime(frame["created_time"], utc=True)
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def compact_table(root: str, table: str = "clips") -> int:
    """Rebuild ``manifest/`` (or ``failures/``) from the per-record files; returns the row count.

    Deterministic: rows sorted by ID, so an interrupted-then-resumed job and an uninterrupted
    one produce the same table.
    """
    folder, records_folder, schema = _TABLES[table]
    records = read_records(root, records_folder)
    sort_key = "clip_id" if table == "clips" else "path"
    arrow = _to_table(records, schema, sort_key)
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer, compression="zstd")
    storage.write_bytes(storage.join(root, folder, "part-00000.parquet"), buffer.getvalue())
    return arrow.num_rows


def load_manifest(path: str | os.PathLike, table: str = "clips") -> pd.DataFrame:
    """The corpus manifest (``table="clips"``) or failures (``"failures"``) as a DataFrame.

    ``path`` is a corpus root, its ``manifest/`` folder or a Parquet file; local or any
    pyarrow URI. Example::

        df = load_manifest("corpus/")
        calm = df[(df.hole_ratio < 0.05) & (df.motion_score < 2)]
    """
    if table not in _TABLES:
        raise ValueError(f"table must be one of {sorted(_TABLES)}, got {table!r}")
    folder, _, schema = _TABLES[table]
    path = os.fspath(path)
    candidates = [storage.join(path, folder), path] if table == "clips" else [storage.join(path, folder)]
    for candidate in candidates:
        if storage.exists(candidate):
            fs, inner = storage.open_filesystem(candidate)
            dataset = pads.dataset(inner, filesystem=fs, format="parquet", schema=schema)
            return dataset.to_table().to_pandas()
    raise FileNotFoundError(
        f"no {table} table under {path}: expected {candidates[0]} (run pipelines.build_dataset first)"
    )


def summarize_manifest(clips: pd.DataFrame, failures: pd.DataFrame | None = None) -> str:
    """A few lines people read after a job: counts, durations, quality spread, failures."""
    lines = []
    if len(clips) == 0:
        lines.append("clips: 0")
    else:
        hours = clips["duration"].sum() / 3600
        lines.append(
            f"clips: {len(clips)} from {clips['video_id'].nunique()} videos, "
            f"{int(clips['num_frames'].sum())} frames, {hours:.2f} h"
        )
        lines.append(
            f"resolution: {', '.join(f'{w}x{h}' for w, h in sorted(set(zip(clips.width, clips.height))))}"
        )
        lines.append(f"depth models: {', '.join(sorted(clips['depth_model'].unique()))}")
        for column in ("hole_ratio", "motion_score", "disparity_p95"):
            q = clips[column].quantile([0.05, 0.5, 0.95])
            lines.append(f"{column}: p05 {q.iloc[0]:.3f}  median {q.iloc[1]:.3f}  p95 {q.iloc[2]:.3f}")
        lines.append(f"sources: {', '.join(f'{k} ({v})' for k, v in clips['source'].value_counts().items())}")
    if failures is not None:
        lines.append(f"failures: {len(failures)}")
        for stage, count in failures["stage"].value_counts().items() if len(failures) else []:
            lines.append(f"  {stage}: {count}")
    return "\n".join(lines)
