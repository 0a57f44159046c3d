"""Long videos as keyframe-aligned time segments that decode as separate tasks.

A video longer than ``segment_seconds`` is cut at the keyframe at or before each multiple of
it; each segment is one split task that seeks to its keyframe (PyAV) and decodes only its
range, so a 2-hour film spreads over the cluster and a retry redoes one segment. A video on
object storage is read by range (a seekable pyarrow file, see
:func:`spatialdreamer.video.probe.open_source`), never downloaded whole: planning reads the
index and a few packets, a segment's split about its own byte range. Boundaries
come from the container's index (a few seeks, no decoding), so they are the same on every
run: clip IDs stay deterministic and resume exact.

Records (beside the per-clip ones of :mod:`spatialdreamer.corpus.records`)::

    _videos/<video_id>.json                the plan: segment time ranges, config hash
    _segments/<video_id>/<segment>.json    a split segment: its clips, frames, status
"""

from __future__ import annotations

import json

import av

from spatialdreamer.corpus.records import (
    TransientError,
    accounted_clips,
    is_transient,
    one_line,
    retry_transient,
    to_json,
    video_record_path,
)
from spatialdreamer.data import storage
from spatialdreamer.data.manifest import failures_part_is_current
from spatialdreamer.video.probe import open_source
from spatialdreamer.video.streams import main_video_stream

__all__ = [
    "finished_clips",
    "keyframe_boundaries",
    "plan_video",
    "read_plan",
    "segment_is_done",
    "segment_record_path",
    "segment_rows",
    "video_is_done",
    "write_segment_record",
]


def keyframe_boundaries(path: str, segment_seconds: float) -> list[float]:
    """Start times (seconds from the stream's start) of the segments of a video: 0, then the
    keyframe at or before each multiple of ``segment_seconds``, strictly increasing.

    Reads only the container index and the packets at each seek target, never decodes.
    A video no longer than one segment (or ``segment_seconds`` 0) gives ``[0.0]``.
    """
    if segment_seconds <= 0:
        return [0.0]
    with open_source(path) as (source, options), av.open(source, **options) as container:
        stream, _ = main_video_stream(container)  # the stream the decoder reads (no cover art)
        if stream is None:
            return [0.0]
        base = stream.time_base
        start = stream.start_time or 0
        if stream.duration is not None:
            duration = float((stream.duration) * base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            return [0.0]
        starts = [0.0]
        target = segment_seconds
        while target < duration - 0.5 * segment_seconds:  # no last segment under half the length
            container.seek(int(target / base) + start, stream=stream, backward=True, any_frame=False)
            found = None
            for packet in container.demux(stream):
                if packet.pts is not None and packet.is_keyframe:
                    found = float((packet.pts - start) * base)
                    break
            if found is not None and found > starts[-1] + 1e-6 and found <= target + 1e-6:
                starts.append(round(found, 6))
            target += segment_seconds
        return starts


def plan_video(row: dict, root: str, config) -> list[dict]:
    """Plan (or re-read the plan of) one source video: the rows of its segments still to split.

    The plan is recorded so a rerun does not open the video again. A video PyAV cannot open
    or index is planned as one segment: the split stage then probes it and records why it is
    unusable, as for any bad input.
    """
    digest = config.content_hash()
    plan = read_plan(root, row["video_id"], digest)
    if plan is None:
        try:
            starts = keyframe_boundaries(row["path"], float(config.segment_seconds))
        except Exception as exc:  # a broken file: one segment, the split stage records the reason
            if is_transient(exc):
                raise TransientError(f"planning {row['path']}: {one_line(exc)}") from exc
            starts = [0.0]
        plan = {"video_id": row["video_id"], "path": row["path"], "starts": starts, "config_hash": digest}
        path = video_record_path(root, row["video_id"])
        retry_transient(lambda: storage.write_bytes(path, to_json(plan)), f"writing {path}")
    finished = finished_clips(root, row["video_id"])
    return [
        segment
        for segment in segment_rows(row, plan["starts"])
        if not segment_is_done(root, row["video_id"], segment["segment"], digest, finished)
    ]


def segment_rows(row: dict, starts: list[float]) -> list[dict]:
    """The split stage's rows of a video cut at ``starts``: ``segment``, ``start`` and ``end``
    seconds (``None`` = the video's beginning / end, so a one-segment video decodes whole)."""
    rows = []
    for k, begin in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else None
        rows.append({**row, "segment": k, "start": begin if k else None, "end": end})
    return rows


def read_plan(root: str, vid: str, content_hash: str) -> dict | None:
    path = video_record_path(root, vid)
    if not storage.exists(path):
        return None
    plan = json.loads(storage.read_bytes(path))
    if plan.get("config_hash") != content_hash or "starts" not in plan:
        return None
    return plan


def segment_record_path(root: str, vid: str, segment: int) -> str:
    return storage.join(root, "_segments", vid, f"{segment:04d}.json")


def write_segment_record(root: str, vid: str, segment: int, record: dict) -> None:
    path = segment_record_path(root, vid, segment)
    retry_transient(lambda: storage.write_bytes(path, to_json(record)), f"writing {path}")


def read_segment_record(root: str, vid: str, segment: int) -> dict | None:
    path = segment_record_path(root, vid, segment)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def packed_segments(root: str, vid: str) -> list[int]:
    """Segments of a video whose pack and manifest part are written (the part is the commit)."""
    parts = storage.list_files(storage.join(root, "manifest", vid), (".parquet",), recursive=False)
    return sorted(int(p.rsplit("part-", 1)[1][: -len(".parquet")]) for p in parts)


def finished_clips(root: str, vid: str) -> set[str]:
    """Clips of a video with nothing left to do: packed, written (a row record), failed or filtered."""
    done = accounted_clips(root, vid)
    for segment in packed_segments(root, vid):
        record = read_segment_record(root, vid, segment)
        done.update(record["clips"] if record else ())
    return done


def segment_is_done(
    root: str, vid: str, segment: int, content_hash: str, finished: set[str] | None = None
) -> bool:
    """Whether a previous run split this segment and all its clips are finished."""
    record = read_segment_record(root, vid, segment)
    if record is None or record.get("config_hash") != content_hash:
        return False
    finished = finished_clips(root, vid) if finished is None else finished
    return set(record["clips"]) <= finished


def video_is_done(root: str, vid: str, content_hash: str) -> bool:
    """Whether every planned segment of a video is split, all their clips are finished and its
    failures part is written (a job killed after packing redoes the last step alone)."""
    plan = read_plan(root, vid, content_hash)
    if plan is None or not failures_part_is_current(root, vid):
        return False
    finished = finished_clips(root, vid)
    return all(segment_is_done(root, vid, k, content_hash, finished) for k in range(len(plan["starts"])))
