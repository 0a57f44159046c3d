"""Pack: each finished segment's clips into one tar and one manifest part (a CPU task per video).

While the job streams, the write stage commits clips one by one (loose files and a row record:
what makes a kill at any moment lose nothing). Once a segment's clips are all accounted for,
its clips are packed::

    shards/<video_id>/<segment>.tar            the six files of every clip, in clip-ID order
    manifest/<video_id>/part-<segment>.parquet  their rows, with the byte range of each clip

The manifest part is written last and is the segment's commit; then the loose files and row
records are removed. Last, the task writes the video's part of the failures table
(``failures/part-<video_id>.parquet``). Each task reads only its own video's records, so no
process ever holds the whole manifest or failures table, and a rerun (after a kill mid-pack)
finishes exactly what was left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import pyarrow.parquet as pq

from spatialdreamer.corpus.records import accounted_clips, retry_transient
from spatialdreamer.corpus.segments import read_plan, read_segment_record
from spatialdreamer.data import storage
from spatialdreamer.data.manifest import compact_video, manifest_part, to_clip_table
from spatialdreamer.data.shards import SHARD_FILES, pack_clips, shard_dir

__all__ = ["pack_path", "pack_segment", "pack_video"]


def pack_path(vid: str, segment: int) -> str:
    """The pack of a segment, relative to the corpus root."""
    return f"shards/{vid}/{segment:04d}.tar"


def _rows_of(root: str, vid: str, clips: list[str]) -> list[dict]:
    rows = []
    for cid in clips:
        path = storage.join(root, "_rows", vid, f"{cid}.json")
        if storage.exists(path):
            rows.append(json.loads(storage.read_bytes(path)))
    return rows


def _remove_loose(root: str, vid: str, clips: list[str]) -> None:
    """Loose files first, row records last: a leftover record still points at what to clear."""
    for cid in clips:
        storage.remove_tree(storage.join(root, shard_dir(vid, cid)))
    for cid in clips:
        storage.delete_file(storage.join(root, "_rows", vid, f"{cid}.json"))


def pack_segment(root: str, vid: str, segment: int, clips: list[str]) -> int:
    """Pack the written clips among ``clips`` of one segment; returns how many were packed.

    Idempotent: a segment whose manifest part exists only has its leftovers cleared.
    """
    part = storage.join(root, manifest_part(vid, segment))
    if storage.exists(part):
        _remove_loose(root, vid, clips)
        return 0
    rows = sorted(_rows_of(root, vid, clips), key=lambda r: r["clip_id"])
    if not rows:  # every clip failed or was filtered: nothing to pack, the failures say why
        _remove_loose(root, vid, clips)  # files a killed writer left for a clip that then failed
        return 0
    relative = pack_path(vid, segment)
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-pack-") as tmp:
        loose: dict[str, dict[str, str]] = {}
        for n, row in enumerate(rows):
            loose[row["clip_id"]] = {}
            for column in SHARD_FILES:
                source = storage.join(root, row[column])
                if storage.is_uri(source):
                    local = os.path.join(tmp, f"{n}-{os.path.basename(row[column])}")
                    retry_transient(lambda s=source, d=local: _download(s, d), f"reading {source}")
                else:
                    local = source
                loose[row["clip_id"]][column] = local
        tar = os.path.join(tmp, "pack.tar")
        placed = pack_clips(tar, loose)
        target = storage.join(root, relative)
        retry_transient(lambda: storage.upload(tar, target), f"uploading {target}")
    for row in rows:
        where = placed[row["clip_id"]]
        row.update(where.members)
        row.update(
            {"segment": segment, "shard": relative, "shard_offset": where.offset, "shard_size": where.size}
        )
    buffer = io.BytesIO()
    pq.write_table(to_clip_table(rows), buffer, compression="zstd")
    retry_transient(lambda: storage.write_bytes(part, buffer.getvalue()), f"writing {part}")
    _remove_loose(root, vid, clips)
    return len(rows)


def _download(source: str, local: str) -> None:
    with storage.local_copy(source) as path:
        shutil.copyfile(path, local)


def pack_video(row: dict, root: str, config) -> dict:
    """Pack every finished segment of one video, then write its part of the failures table
    (``failures/part-<video_id>.parquet``, from its failure records; none if it has none).

    ``row`` has the ``video_id``; returns ``{"video_id", "packed", "failures"}`` (clips packed
    now, rows in the video's failures part).
    """
    vid = str(row["video_id"])
    packed = 0
    plan = read_plan(root, vid, config.content_hash())
    accounted = accounted_clips(root, vid)
    for segment in range(len(plan["starts"]) if plan else 0):
        record = read_segment_record(root, vid, segment)
        if record is None:
            continue  # not split yet (a job stopped early): packed by the run that splits it
        clips = list(record["clips"])
        done = storage.exists(storage.join(root, manifest_part(vid, segment)))
        if done or set(clips) <= accounted:
            packed += pack_segment(root, vid, segment, clips)
    leftover = storage.join(root, "_rows", vid)
    if not storage.list_files(leftover, (".json",), recursive=False):
        storage.remove_tree(leftover)
    failures = retry_transient(lambda: compact_video(root, "failures", vid), f"writing failures of {vid}")
    return {"video_id": vid, "packed": packed, "failures": failures}
