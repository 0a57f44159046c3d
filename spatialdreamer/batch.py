"""Batch conversion: a folder, a glob or a list file of videos, each through ``convert_video``.

Outputs that exist are skipped (unless ``overwrite``), so rerunning a batch after a crash goes
on where it stopped (and an interrupted file resumes from its last finished part). Two inputs
with the same stem never write the same output: a folder's subfolders are mirrored in the
output folder, and remaining clashes get `` (2)``, `` (3)``... in input order.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spatialdreamer.convert import ConvertOptions, OutputExistsError, convert_video, output_path_for
from spatialdreamer.stereo.images import IMAGE_SUFFIXES
from spatialdreamer.video import VideoError, probe_video

__all__ = ["BatchReport", "convert_batch", "list_inputs", "plan_outputs"]

log = logging.getLogger(__name__)

#: what a folder scan picks up (anything else in the folder is not a video)
MEDIA_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".wmv",
     ".flv", ".3gp", ".ogv", ".gif", *IMAGE_SUFFIXES}
)  # fmt: skip
#: a file with one input path per line (``#`` starts a comment)
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = "*?["


def _walk(root: Path, recursive: bool) -> list[Path]:
    """Media files under ``root`` in sorted order; hidden files (``.x``, macOS ``._x``) and
    symlinked folders (which can loop) are left out."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and path.suffix.lower() in MEDIA_SUFFIXES:
                found.append(path)
    return found


def _read_list(path: Path) -> list[Path]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [
        (path.parent / line) if not os.path.isabs(line) else Path(line)
        for line in lines
        if line and not line.startswith("#")
    ]


def list_inputs(spec: str | os.PathLike, recursive: bool = False) -> tuple[list[Path], Path | None]:
    """The inputs ``spec`` names, each once (by resolved path), and the folder they are relative
    to (for mirroring subfolders; None for a glob or a list).

    ``spec``: a video or picture; a folder (its media files, subfolders with ``recursive``);
    a glob (``"clips/*.mp4"``, ``**`` with ``recursive``); or a ``.txt``/``.lst``/``.list``
    file of paths, one per line (relative to the list's folder).
    """
    text = os.fspath(spec)
    path = Path(text)
    root = None
    if path.is_dir():
        candidates, root = _walk(path, recursive), path
    elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        candidates = _read_list(path)
    elif any(ch in text for ch in _GLOB_CHARS) and not path.exists():
        candidates = sorted(Path(p) for p in glob.glob(text, recursive=recursive) if Path(p).is_file())
    else:
        return [path], None
    unique, seen = [], set()
    for candidate in candidates:
        key = candidate.resolve() if candidate.exists() else candidate
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique, root


def plan_outputs(
    inputs: list[Path], out_dir: Path, fmt: str, root: Path | None, images: set[Path] | None = None
) -> list[Path]:
    """One output path per input in ``out_dir``, none shared: subfolders under ``root`` are
    mirrored, and clashing names get `` (2)``, `` (3)``... in input order."""
    images = images or set()
    planned: list[Path] = []
    taken: set[str] = set()
    for source in inputs:
        folder = out_dir
        if root is not None:
            folder = out_dir / source.parent.relative_to(root)
        target = output_path_for(source, folder, fmt, image=source in images)
        n = 2
        while str(target).casefold() in taken:
            target = output_path_for(source.with_name(f"{source.stem} ({n}){source.suffix}"), folder, fmt,
                                     image=source in images)  # fmt: skip
            n += 1
        taken.add(str(target).casefold())
        planned.append(target)
    return planned


@dataclass
class BatchReport:
    """What a batch did: outputs written, inputs skipped (output there already) and failed."""

    converted: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        skipped = f"{len(self.skipped)} skipped (output exists)"
        return f"{len(self.converted)} converted, {skipped}, {len(self.failed)} failed"


def convert_batch(
    inputs: list[Path],
    out_dir: str | os.PathLike,
    options: ConvertOptions,
    *,
    root: Path | None = None,
    skip_errors: bool = False,
    progress: Callable[[Path, int, int], Callable | None] | None = None,
) -> BatchReport:
    """Convert ``inputs`` into ``out_dir``; see the module docstring.

    Without ``skip_errors`` the first failure is raised (outputs already written stay); with
    it, failures are collected in the report with their one-line reason and the batch goes on.
    ``progress(source, index, count)`` may return the per-file progress callback.
    """
    options.validate()  # bad options fail once, not once per file
    out_dir = Path(out_dir)
    if (
        out_dir.suffix.lower() in (*IMAGE_SUFFIXES, ".mp4", ".mkv", ".mov", ".webm", ".avi")
        and not out_dir.is_dir()
    ):
        raise ValueError(f"several inputs need an output folder, not the file name {out_dir.name}")
    images = set()
    for source in inputs:
        try:
            if probe_video(source, decode_check=False).is_image:
                images.add(source)
        except VideoError:
            pass  # reported when its turn comes
    outputs = plan_outputs(inputs, out_dir, options.format, root, images)
    report = BatchReport()
    for index, (source, target) in enumerate(zip(inputs, outputs, strict=True)):
        if target.exists() and not options.overwrite:
            report.skipped.append(target)
            continue
        callback = progress(source, index, len(inputs)) if progress is not None else None
        try:
            result = convert_video(source, target, options, progress=callback)
        except (VideoError, ValueError, OSError, RuntimeError) as exc:
            if isinstance(exc, OutputExistsError) or not skip_errors:
                raise
            reason = (
                exc.reason if isinstance(exc, VideoError) else str(exc).splitlines()[0] or type(exc).__name__
            )
            log.info("failed: %s: %s", source, reason)
            report.failed.append((source, reason))
            continue
        report.converted.append(result.output)
    return report
