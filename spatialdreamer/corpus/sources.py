"""Listing the source videos of a corpus build: a folder, a glob, one video or an input manifest.

A real video library holds more than videos: macOS ``._`` companions, folders named like
videos, broken and looping symbolic links, the same file reached by several paths, and maybe
the corpus itself when ``--output`` sits inside ``--input``. Listing decides which entries
are inputs, lists each file once (by its resolved path), never walks into the job's own
output or round a symlink loop, and returns every entry it leaves out with the reason, so
the job can record it in the failures table instead of skipping it without a word.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from spatialdreamer.corpus.records import one_line
from spatialdreamer.data import storage
from spatialdreamer.data.ids import video_id

__all__ = ["LIST_STAGE", "VIDEO_SUFFIXES", "SourceListing", "find_sources", "list_sources"]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (
    ".mp4",
    ".mkv",
    ".mov",
    ".avi",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",  # AVCHD camcorders
    ".m2ts",
    ".wmv",
    ".flv",
    ".3gp",
    ".ogv",
    ".gif",  # animated GIFs are short videos
)
# The failures-table stage of inputs that were listed but are not videos.
LIST_STAGE = "list"
# A folder holding this file is a corpus (the job's own output): never a source of videos.
_CORPUS_MARKER = "_job.json"


@dataclass
class SourceListing:
    """``videos``: one row per source video (see :func:`list_sources`); ``skipped``: the
    entries that looked like inputs but are not videos, each ``{"path", "reason"}``."""

    videos: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


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


def _has_video_suffix(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES)


def _link_problem(path: str) -> str | None:
    """Why a symbolic link cannot be read (broken, or a loop); ``None`` if it resolves."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return f"is a broken symbolic link (its target {os.readlink(path)} does not exist)"
        return f"cannot be read ({exc.strerror})"
    return None


def _name_problem(name: str) -> str | None:
    """Why a file with a video suffix is not an input, judged by its name alone."""
    if name.startswith("._"):
        return "is a macOS metadata file (an AppleDouble '._' companion), not a video"
    if name.startswith("."):
        return "is a hidden file (its name starts with '.')"
    return None


def _entry_problem(path: str) -> str | None:
    """Why the local entry ``path`` (found in a folder or by a glob) is not an input video."""
    problem = _name_problem(os.path.basename(path))
    if problem:
        return problem
    if os.path.islink(path):
        problem = _link_problem(path)
        if problem:
            return problem
    if os.path.isdir(path):
        return "is a folder, not a video file"
    if not os.path.isfile(path):
        return "is not a regular file"
    return None


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _in_corpus(path: str) -> bool:
    """Whether a folder above ``path`` is a corpus built by this job."""
    folder = os.path.dirname(path)
    while True:
        if os.path.exists(os.path.join(folder, _CORPUS_MARKER)):
            return True
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


def _walk_local(root: str, excluded: set[str]) -> SourceListing:
    """Video files under a local folder, symbolic links followed once: a folder already
    visited (by its resolved path) is not entered again, so loops end at once. Hidden folders
    (``.git``, macOS ``.Trashes``) are not searched."""
    listing = SourceListing()
    visited: set[str] = set()
    pending = [os.path.abspath(root)]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        if _inside(real, excluded):
            log.info("not listing %s: it is the job's output", folder)
            continue
        if folder != os.path.abspath(root) and os.path.exists(os.path.join(folder, _CORPUS_MARKER)):
            log.info("not listing %s: it is a corpus built by this job", folder)
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append({"path": folder, "reason": f"folder cannot be listed ({exc.strerror})"})
            continue
        subfolders = []
        for entry in entries:
            if os.path.isdir(entry.path) and not entry.name.startswith("."):  # False for a loop
                subfolders.append(entry.path)
            if not _has_video_suffix(entry.name):
                continue
            problem = _entry_problem(entry.path)
            if problem:
                listing.skipped.append({"path": entry.path, "reason": problem})
            else:
                listing.videos.append({"path": entry.path})
        pending.extend(reversed(subfolders))  # depth first, in name order
    return listing


def _walk_uri(root: str, excluded: set[str]) -> SourceListing:
    """Video files under a folder on an object store (no links there); folders named like
    videos and hidden files are reported, the job's output is left out."""
    import pyarrow.fs as pafs

    listing = SourceListing()
    fs, inner = storage.open_filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    scheme = root.split("://", 1)[0] + "://"
    inner_excluded = {storage.open_filesystem(e)[1] for e in excluded if storage.is_uri(e)}
    for info in sorted(infos, key=lambda i: i.path):
        if not _has_video_suffix(info.base_name) or _inside(info.path, inner_excluded):
            continue
        path = info.path if "://" in info.path else scheme + info.path
        problem = _name_problem(info.base_name)
        if problem is None and info.type == pafs.FileType.Directory:
            problem = "is a folder, not a video file"
        if problem:
            listing.skipped.append({"path": path, "reason": problem})
        elif info.type == pafs.FileType.File:
            listing.videos.append({"path": path})
    return listing


def _from_table(spec: str) -> list[dict]:
    if not storage.exists(spec):
        raise FileNotFoundError(f"input manifest {spec} does not exist")
    try:
        table = _read_sources_table(spec)
    except Exception as exc:
        raise ValueError(f"{spec}: cannot read it as an input manifest ({one_line(exc)})") from exc
    if "path" not in table.columns:
        raise ValueError(f"{spec}: an input manifest needs a 'path' column, found {list(table.columns)}")
    base = spec.rsplit("/", 1)[0] if storage.is_uri(spec) else os.path.dirname(os.path.abspath(spec))
    rows = []
    for record in table.to_dict("records"):
        path = "" if _is_missing(record["path"]) else str(record["path"]).strip()
        if not path:
            continue
        if not storage.is_uri(path):
            path = os.path.expanduser(path)
            if not os.path.isabs(path):
                path = f"{base}/{path}" if storage.is_uri(base) else os.path.join(base, path)
            if not storage.is_uri(path):
                path = os.path.normpath(path)
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
    return rows


def _from_glob(spec: str, excluded: set[str]) -> SourceListing:
    listing = SourceListing()
    for match in sorted(glob.glob(spec, recursive=True)):
        path = os.path.abspath(match)
        if _inside(os.path.realpath(path), excluded) or _in_corpus(path):
            continue
        problem = _entry_problem(path)
        if problem is None:
            listing.videos.append({"path": path})
        elif _has_video_suffix(path) or os.path.islink(path):  # a folder matched by "*" is no input
            listing.skipped.append({"path": path, "reason": problem})
    if not listing.videos and not listing.skipped:
        raise FileNotFoundError(f"no files match {spec}")
    return listing


def _identity(path: str) -> str:
    """The key under which two listings of one file are the same input: the resolved path."""
    return path if storage.is_uri(path) else os.path.realpath(path)


def find_sources(spec: str, exclude: Iterable[str] = ()) -> SourceListing:
    """The source videos of ``spec``, and the entries left out with their reasons.

    ``spec`` is a folder (searched recursively, symbolic links followed once), a glob, one
    video, or a CSV/Parquet input manifest with a ``path`` column (optional ``source``,
    ``license``, ``tags``: ``;``-separated in CSV, a list in Parquet); relative paths in a
    manifest are resolved against the manifest's folder. Nothing under the ``exclude`` roots
    (the job's output) or in another corpus is listed, and each file is listed once however
    many paths reach it (the first one is kept).

    Every video row gets ``path``, ``source`` (default: the parent folder's name), ``license``,
    ``tags`` and ``video_id``. Files are not opened here: broken videos are found (and
    recorded) by the split stage, so one bad file never stops the job.

    Example:
        >>> find_sources("corpus_inputs/").skipped  # doctest: +SKIP
        [{'path': '/data/corpus_inputs/._clip.mp4', 'reason': 'is a macOS metadata file ...'}]
    """
    spec = str(spec)
    local = not storage.is_uri(spec)
    excluded = {os.path.realpath(e) if not storage.is_uri(e) else e for e in exclude}
    if spec.lower().endswith((".csv", ".parquet")):
        listing = SourceListing(videos=_from_table(spec))
    elif local and any(ch in spec for ch in "*?["):
        listing = _from_glob(spec, excluded)
    elif (local and os.path.isdir(spec)) or (not local and storage.exists(spec) and not _is_file(spec)):
        listing = _walk_local(spec, excluded) if local else _walk_uri(spec, excluded)
        if not listing.videos and not listing.skipped:
            raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {spec}")
    elif storage.exists(spec):
        listing = SourceListing(videos=[{"path": spec if not local else os.path.abspath(spec)}])
    else:
        raise FileNotFoundError(
            f"input {spec} does not exist (expected a folder, glob, video or CSV/Parquet manifest)"
        )
    seen: set[str] = set()
    videos = []
    for row in listing.videos:
        key = _identity(row["path"])
        if key in seen or (local and _inside(key, excluded)):
            continue
        seen.add(key)
        if not row.get("source"):
            row["source"] = _default_source(row["path"])
        row.setdefault("license", "")
        row.setdefault("tags", [])
        row["video_id"] = video_id(row["path"])
        videos.append(row)
    skipped_once = {s["path"]: s for s in listing.skipped}
    return SourceListing(videos=videos, skipped=list(skipped_once.values()))


def list_sources(spec: str, exclude: Iterable[str] = ()) -> list[dict]:
    """The source videos of ``spec`` (see :func:`find_sources`), without the skipped entries."""
    return find_sources(spec, exclude).videos


def _is_file(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, inner = storage.open_filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def _default_source(path: str) -> str:
    parts = path.rstrip("/").rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 else ""
