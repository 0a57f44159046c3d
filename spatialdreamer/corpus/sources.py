"""Listing the source videos of a corpus build: a folder, a glob, one video or an input manifest."""

from __future__ import annotations

import csv
import glob
import io
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from spatialdreamer.corpus.records import one_line
from spatialdreamer.data import storage
from spatialdreamer.data.ids import video_id

__all__ = ["VIDEO_SUFFIXES", "list_sources"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


def _read_sources_table(path: str) -> pd.DataFrame:
    data = storage.read_bytes(path)
    if path.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.DataFrame(list(csv.DictReader(io.StringIO(data.decode("utf-8-sig")))))


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _tags(value) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(";") if t.strip()]
    return [str(t) for t in value]


def list_sources(spec: str) -> list[dict]:
    """Source videos from a folder, a glob, one video, or a CSV/Parquet input manifest with a
    ``path`` column (optional ``source``, ``license``, ``tags``: ``;``-separated in CSV, a list
    in Parquet). Relative paths in a manifest are resolved against the manifest's folder.

    Every row gets ``path``, ``source`` (default: the parent folder's name), ``license``,
    ``tags`` and ``video_id``. Paths are only listed here; missing or broken files are found
    (and recorded) by the split stage, so one bad row never stops the job.
    """
    spec = str(spec)
    rows: list[dict] = []
    if spec.lower().endswith((".csv", ".parquet")):
        if not storage.exists(spec):
            raise FileNotFoundError(f"input manifest {spec} does not exist")
        try:
            table = _read_sources_table(spec)
        except Exception as exc:
            raise ValueError(f"{spec}: cannot read it as an input manifest ({one_line(exc)})") from exc
        if "path" not in table.columns:
            raise ValueError(f"{spec}: an input manifest needs a 'path' column, found {list(table.columns)}")
        base = spec.rsplit("/", 1)[0] if storage.is_uri(spec) else os.path.dirname(os.path.abspath(spec))
        for record in table.to_dict("records"):
            path = "" if _is_missing(record["path"]) else str(record["path"]).strip()
            if not path:
                continue
            if not storage.is_uri(path) and not os.path.isabs(path):
                path = (
                    os.path.normpath(storage.join(base, path))
                    if not storage.is_uri(base)
                    else f"{base}/{path}"
                )
            source = record.get("source")
            license_ = record.get("license")
            rows.append(
                {
                    "path": path,
                    "source": "" if _is_missing(source) else str(source),
                    "license": "" if _is_missing(license_) else str(license_),
                    "tags": _tags(record.get("tags")),
                }
            )
    elif any(ch in spec for ch in "*?[") and not storage.is_uri(spec):
        rows = [
            {"path": os.path.abspath(p)} for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)
        ]
        if not rows:
            raise FileNotFoundError(f"no files match {spec}")
    elif storage.exists(spec) and not _is_file(spec):
        rows = [{"path": p} for p in storage.list_files(spec, VIDEO_SUFFIXES)]
        if not rows:
            raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {spec}")
    elif storage.exists(spec):
        rows = [{"path": spec if storage.is_uri(spec) else os.path.abspath(spec)}]
    else:
        raise FileNotFoundError(
            f"input {spec} does not exist (expected a folder, glob, video or CSV/Parquet manifest)"
        )
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["path"] in seen:
            continue
        seen.add(row["path"])
        if not row.get("source"):
            row["source"] = _default_source(row["path"])
        row.setdefault("license", "")
        row.setdefault("tags", [])
        row["video_id"] = video_id(row["path"])
        out.append(row)
    return out


def _is_file(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, inner = storage.open_filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def _default_source(path: str) -> str:
    parts = path.rstrip("/").rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 else ""
