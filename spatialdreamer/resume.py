"""Resumable conversions: the output is written as parts, and a rerun goes on from the last one.

A conversion encodes its frames into parts of a fixed number of frames (each part its own
encoder, so each starts with a keyframe) in a hidden folder next to the output,
``.<output name>.parts/``. With every finished part it saves what the next part needs to
come out exactly as in an uninterrupted run: the source time reached, the frames written and
the state of every stateful stage (cut detector, depth model and normaliser, stabiliser,
screen-plane planner) at that frame. Rerunning the same command after a crash or a kill
restores that state, decodes from the next frame and encodes only the parts still missing;
the finished parts are joined without re-encoding and the source audio is added, so the
result has the same frames and the same audio as a run that was never interrupted: rerun as
a new process (the command again, after a kill or Ctrl-C), the decoded frames are
bit-identical (tested). A resume inside the very process that was interrupted (a library
caller catching KeyboardInterrupt and calling again) gets bit-identical encoder input, but
its later parts can differ in a few bits, for a reason not yet found (the interrupted run's
leftover threads are the suspect); decoded, the two agree above 40 dB PSNR. A folder left by a different
command (other options, or a changed source) is discarded. State that is not plain data (the
planner's list of shots for ``--report``) is not saved: after a resume the report lists the
shots from the resume point on.

State is stored with ``torch.save`` and read back with ``weights_only=True``: tensors, numbers,
strings and containers of them, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from pathlib import Path

import numpy as np
import torch

from spatialdreamer.video.segments import join_parts
from spatialdreamer.video.writer import VideoWriter, finish_with_audio, sibling_path

__all__ = ["PartsFolder", "SegmentedVideoWriter", "parts_folder_for", "restore_state", "snapshot_state"]

log = logging.getLogger(__name__)

_NAME_MAX = 255
_RECORD = "{:05d}.state.pt"
_PART = "{:05d}.mp4"


def parts_folder_for(out_path: str | os.PathLike) -> Path:
    """``.<name>.parts`` next to the output (long names cut, with a hash of the whole name)."""
    out_path = Path(out_path)
    name = f".{out_path.name}.parts"
    if len(name.encode()) > _NAME_MAX:
        digest = hashlib.sha1(out_path.name.encode()).hexdigest()[:12]
        keep = out_path.name.encode()[: _NAME_MAX - 32].decode("utf-8", errors="ignore")
        name = f".{keep}~{digest}.parts"
    return out_path.with_name(name)


# ---------------------------------------------------------------------------------------------
# the state of stateful stages, as plain data


def _plain(value):
    """``value`` as data ``torch.load(weights_only=True)`` reads, or ``_SKIP`` (models, devices)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.nn.Module):
        return _SKIP
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return {"__numpy__": torch.from_numpy(np.array(value))}
    if isinstance(value, deque | list | tuple):
        items = [_plain(v) for v in value]
        if any(item is _SKIP for item in items):
            return _SKIP
        if isinstance(value, deque):
            return {"__deque__": items, "maxlen": value.maxlen}
        return {"__tuple__": items} if isinstance(value, tuple) else items
    return _SKIP


_SKIP = object()


def _unplain(value, device: torch.device | None):
    if isinstance(value, torch.Tensor):
        return value.to(device) if device is not None else value
    if isinstance(value, list):
        return [_unplain(v, device) for v in value]
    if isinstance(value, dict):
        if "__numpy__" in value:
            return value["__numpy__"].numpy()
        if "__deque__" in value:
            return deque((_unplain(v, device) for v in value["__deque__"]), maxlen=value["maxlen"])
        if "__tuple__" in value:
            return tuple(_unplain(v, device) for v in value["__tuple__"])
    return value


def snapshot_state(stages: dict[str, object]) -> dict[str, dict]:
    """The attributes of each stage that are data (tensors, arrays, numbers, containers), copied."""
    state = {}
    for name, stage in stages.items():
        fields = {key: _plain(value) for key, value in vars(stage).items()}
        state[name] = {key: value for key, value in fields.items() if value is not _SKIP}
    return state


def restore_state(stages: dict[str, object], state: dict[str, dict]) -> None:
    """Put a :func:`snapshot_state` back; tensors go to the stage's ``device`` if it has one."""
    for name, stage in stages.items():
        device = getattr(stage, "device", None)
        device = device if isinstance(device, torch.device) else None
        for key, value in state.get(name, {}).items():
            setattr(stage, key, _unplain(value, device))


# ---------------------------------------------------------------------------------------------
# the parts folder


class PartsFolder:
    """The finished parts of one conversion and their records; see the module docstring.

    ``job`` describes the conversion (source identity, options); parts left by another job
    are discarded when the folder is opened.
    """

    def __init__(self, out_path: str | os.PathLike, job: dict) -> None:
        self.out_path = Path(out_path)
        self.path = parts_folder_for(self.out_path)
        self.job = json.loads(json.dumps(job, default=str))
        self.records: list[dict] = []
        self._open()

    def _open(self) -> None:
        job_file = self.path / "job.json"
        if self.path.exists():
            try:
                same = json.loads(job_file.read_text()) == self.job
            except (OSError, ValueError):
                same = False
            if not same:
                log.warning("%s: discarding the parts of a different conversion", self.path)
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not job_file.exists():
            tmp = self.path / ".job.json.tmp"
            tmp.write_text(json.dumps(self.job, sort_keys=True))
            os.replace(tmp, job_file)
        index = 0
        while (self.path / _RECORD.format(index)).exists() and (self.path / _PART.format(index)).exists():
            try:
                record = torch.load(self.path / _RECORD.format(index), weights_only=True)
            except Exception as exc:  # a damaged record: start again from the part before it
                log.warning("%s: unreadable record %d (%s); redoing from there", self.path, index, exc)
                break
            self.records.append(record)
            index += 1
        for leftover in self.path.iterdir():  # the part in progress when the run stopped
            if leftover.name != "job.json" and _index(leftover) not in range(len(self.records)):
                leftover.unlink()
        if self.records:
            log.info("%s: resuming after %d finished parts", self.path, len(self.records))

    @property
    def checkpoint(self) -> dict | None:
        """The record of the last finished part, or None."""
        return self.records[-1] if self.records else None

    def next_part(self) -> Path:
        return self.path / _PART.format(len(self.records))

    def finish_part(self, record: dict) -> None:
        """Record the part just written to :meth:`next_part` (written last: it marks the part done)."""
        target = self.path / _RECORD.format(len(self.records))
        tmp = self.path / f".{target.name}.tmp"
        torch.save(record, tmp)
        os.replace(tmp, target)
        self.records.append(record)

    def parts(self) -> list[Path]:
        return [self.path / _PART.format(i) for i in range(len(self.records))]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _index(path: Path) -> int:
    head = path.name.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


class SegmentedVideoWriter:
    """A :class:`~spatialdreamer.video.VideoWriter` that writes ``part_frames`` frames per part.

    ``write(frames, stamps)`` takes source timestamps; the output clock starts at the first
    frame of the conversion (``first_stamp``, kept across resumes). ``state_at(frame)`` returns
    the stages' snapshot taken after source frame ``frame`` (a part closes only where one was
    taken). :meth:`close` joins the parts, adds the audio and moves the file into place.
    """

    def __init__(
        self,
        parts: PartsFolder,
        part_frames: int,
        make_writer,
        state_at,
        *,
        audio_from: str | None = None,
        audio_range: tuple[float, float | None] = (0.0, None),
    ) -> None:
        self.parts = parts
        self.part_frames = int(part_frames)
        self.make_writer = make_writer  # Path -> VideoWriter without audio
        self.state_at = state_at
        self.audio_from = audio_from
        self.audio_range = audio_range
        checkpoint = parts.checkpoint
        self.frames = int(checkpoint["frames"]) if checkpoint else 0
        self.first_stamp: float | None = checkpoint["first_stamp"] if checkpoint else None
        self.finished = bool(checkpoint and checkpoint.get("final"))
        self._writer: VideoWriter | None = None
        self._in_part = 0
        self._last_stamp: float | None = None
        self._part_start = 0.0

    def write(self, frames: torch.Tensor, stamps: torch.Tensor) -> None:
        if self.first_stamp is None:
            self.first_stamp = float(stamps[0])
        offset = 0
        while offset < len(frames):
            if self._writer is None:
                self._writer = self.make_writer(self.parts.next_part())
                self._in_part = 0
                self._part_start = float(stamps[offset]) - self.first_stamp
            take = min(len(frames) - offset, self.part_frames - self._in_part)
            piece = stamps[offset : offset + take]
            self._writer.write(frames[offset : offset + take], timestamps=piece - self.first_stamp)
            self._in_part += take
            self.frames += take
            self._last_stamp = float(piece[-1])
            offset += take
            if self._in_part == self.part_frames:
                self._close_part(final=False)

    def _close_part(self, final: bool) -> None:
        self._writer.close()
        self._writer = None
        state = {} if final else self.state_at(self.frames)
        self.parts.finish_part(
            {
                "frames": self.frames,
                "last_stamp": self._last_stamp,
                "first_stamp": self.first_stamp,
                "final": final,
                "start": self._part_start,
                "state": state,
            }
        )

    def close(self) -> Path:
        """Finish the last part, join all parts into the output with the audio, clean up."""
        out_path = self.parts.out_path
        if self._writer is not None:
            self._close_part(final=True)
        parts = self.parts.parts()
        if not parts:
            raise ValueError(f"no frames were written to {out_path}")
        video_only = sibling_path(out_path, "video-only")
        try:
            join_parts(parts, [float(r["start"]) for r in self.parts.records], video_only)
        except BaseException:
            video_only.unlink(missing_ok=True)
            raise
        finish_with_audio(video_only, out_path, self.audio_from, self.audio_range)
        self.parts.remove()
        return out_path

    def abort(self, keep_parts: bool) -> None:
        """Drop the part in progress; keep the finished ones for a rerun if ``keep_parts``."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        if not keep_parts or not self.parts.records:
            self.parts.remove()
