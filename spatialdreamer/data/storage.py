"""Files on local disk or any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

Encoders and decoders need local files, so inputs are copied to a local temporary file and
outputs are written locally and then uploaded. Every output lands under its final name in one
step (rename on local disk, a single PUT on object stores), so a crash never leaves a
half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

__all__ = [
    "exists",
    "is_uri",
    "join",
    "list_files",
    "local_copy",
    "open_filesystem",
    "read_bytes",
    "remove_tree",
    "upload",
    "write_bytes",
]


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


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` either does not exist or is complete."""
    fs, p = open_filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as stream:
        stream.write(data)


def upload(local: str | os.PathLike, destination: str) -> None:
    """Move a finished local file to ``destination`` (rename when local, copy when remote)."""
    fs, p = open_filesystem(destination)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.move(os.fspath(local), tmp)
        os.replace(tmp, p)
        return
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(os.fspath(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    os.unlink(local)


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


def list_files(root: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``root`` (recursive) whose names end with one of ``suffixes``, sorted."""
    fs, p = open_filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    found = [i.path for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes)]
    if is_uri(str(root)):
        scheme = str(root).split("://", 1)[0]
        found = [f"{scheme}://{f}" if not is_uri(f) else f for f in found]
    return sorted(found)


def remove_tree(path: str) -> None:
    fs, p = open_filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)
