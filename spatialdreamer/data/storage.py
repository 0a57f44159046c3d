"""Files on local disk or any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

Source videos are decoded straight from object storage by range (PyAV reads a seekable pyarrow
file: :func:`spatialdreamer.video.probe.open_source`); other inputs that need a local file
(decord, the shard files of a loose corpus) are copied to a local temporary file, and outputs
are written locally and then uploaded. Every output lands under its final name in one
step (rename on local disk, a single PUT on object stores), so a crash never leaves a
half-written file that looks complete. Local temporary names start with a dot and end with
``.tmp-<random>``: readers (and pyarrow datasets) skip them, and :func:`remove_stale_temporaries`
clears what a killed job left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs

__all__ = [
    "delete_file",
    "exists",
    "is_uri",
    "join",
    "list_dirs",
    "list_files",
    "local_copy",
    "open_filesystem",
    "read_bytes",
    "read_range",
    "remove_stale_temporaries",
    "remove_tree",
    "upload",
    "write_bytes",
]

_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


def is_uri(path: str) -> bool:
    return "://" in str(path)


def open_filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or URI."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(root: str, *parts: str) -> str:
    root = str(root)
    if is_uri(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(root, *parts)


def exists(path: str) -> bool:
    fs, p = open_filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, p = open_filesystem(path)
    with fs.open_input_stream(p) as stream:
        return stream.read()


def read_range(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` from ``offset``: one ranged read (a range GET on object stores)."""
    fs, p = open_filesystem(path)
    with fs.open_input_file(p) as handle:
        return handle.read_at(size, offset)


def _temporary_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def _land_locally(path: str, put: Callable[[str], object]) -> None:
    """``put`` the content under a hidden temporary name beside ``path``, then rename it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        put(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` either does not exist or is complete."""
    fs, p = open_filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        _land_locally(p, lambda tmp: Path(tmp).write_bytes(data))
        return
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as stream:
        stream.write(data)


def upload(local: str | os.PathLike, destination: str) -> None:
    """Move a finished local file to ``destination`` (rename when local, copy when remote)."""
    fs, p = open_filesystem(destination)
    if isinstance(fs, pafs.LocalFileSystem):
        _land_locally(p, lambda tmp: shutil.move(os.fspath(local), tmp))
        return
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(os.fspath(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    os.unlink(local)


def delete_file(path: str) -> None:
    """Delete ``path`` if it exists."""
    fs, p = open_filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path for ``path``: itself when local, else a temporary download."""
    fs, p = open_filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        yield p
        return
    suffix = os.path.splitext(p)[1]
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-") as tmp:
        local = os.path.join(tmp, f"input{suffix}")
        pafs.copy_files(p, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield local


def _with_scheme(root: str, found: list[str]) -> list[str]:
    if is_uri(str(root)):
        scheme = str(root).split("://", 1)[0]
        found = [f"{scheme}://{f}" if not is_uri(f) else f for f in found]
    return found


def list_files(root: str, suffixes: tuple[str, ...], recursive: bool = True) -> list[str]:
    """Files under ``root`` whose names end with one of ``suffixes``, sorted (temporaries and
    other hidden files excluded)."""
    fs, p = open_filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True))
    found = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.lower().endswith(suffixes)
        and not i.base_name.startswith(".")
    ]
    return sorted(_with_scheme(root, found))


def list_dirs(root: str) -> list[str]:
    """Names (not paths) of the folders directly under ``root``, sorted; none if it is missing."""
    fs, p = open_filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def remove_tree(path: str) -> None:
    fs, p = open_filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def remove_stale_temporaries(root: str) -> int:
    """Delete temporary files a killed writer left under a local ``root``; returns how many.

    Only for a root no other job is writing to. Object stores have none (one PUT per file).
    """
    if is_uri(root):
        return 0
    removed = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if _TEMPORARY.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed
