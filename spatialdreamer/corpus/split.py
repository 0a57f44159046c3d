"""Split: probe, decode, shot cuts and clips (a CPU task per video segment)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator

import numpy as np

from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.records import TransientError, is_transient, one_line, record_failure
from spatialdreamer.corpus.segments import finished_clips, segment_is_done, write_segment_record
from spatialdreamer.corpus.shots import make_shot_detector
from spatialdreamer.data.ids import clip_id
from spatialdreamer.video import VideoError, probe_video, stream_arrays
from spatialdreamer.video.clips import ClipSplitter, resize_and_crop

__all__ = ["split_video"]


def split_video(row: dict, root: str, config: CorpusConfig) -> Iterator[dict]:
    """Decode one segment of a source video in bounded chunks and cut it into clips at the
    training size (a row without ``segment`` is the whole video).

    A generator: clips are handed on as soon as they are complete (frames as ``[T,H,W,3]``
    uint8), so memory holds one decode chunk and one clip whatever the video's length. A
    segment after the first seeks to its keyframe and decodes only ``[start, end)`` seconds (a
    URI is read by range, not downloaded: about the segment's bytes plus the header and index);
    its frames are numbered from its first frame's timestamp, and a segment boundary ends a
    shot, so the clips do not depend on which tasks ran. Clips never cross a shot cut (found by
    ``config.shot_detector``) and keep ``config.trim`` frames away from each cut. Clips already
    finished are skipped; a segment whose clips are all finished is not decoded. A permanent
    failure is recorded with its stage (``probe`` before the first frame, ``decode`` after), and
    the clips completed before it are kept; a transient one (storage throttling, a lost
    connection) is raised for Ray to retry the task, and nothing is recorded.
    """
    path, vid = row["path"], row["video_id"]
    segment, start, end = int(row.get("segment", 0)), row.get("start"), row.get("end")
    digest = config.content_hash()
    finished = finished_clips(root, vid)
    if segment_is_done(root, vid, segment, digest, finished):
        return
    emitted: list[str] = []
    status, frames_seen, error = "complete", 0, None
    try:
        info = probe_video(path)
        if info.is_image:
            raise VideoError(path, "is a still image, not a video")
        splitter = ClipSplitter(config.clip_length, config.stride, config.min_length, config.trim)
        shots = make_shot_detector(config)
        waiting: deque[tuple[np.ndarray, float]] = deque()  # frames whose cut flag is not settled
        first = 0  # index of the segment's first frame in the video

        def hand_on(clips):
            for clip in clips:
                emitted.append(clip_id(vid, first + clip.start, first + clip.stop))
                if emitted[-1] not in finished:
                    yield _clip_row(row, info.fps, info.width, info.height, clip, first, segment)

        last_time = None
        for chunk in stream_arrays(path, config.decode_chunk, start=start, end=end, info=info):
            if frames_seen == 0 and start is not None:
                first = round(float(chunk.timestamps[0]) * info.fps)
            frames = resize_and_crop(chunk.frames, config.width, config.height)
            waiting.extend(zip(frames, chunk.timestamps.tolist(), strict=True))
            for flag in shots.push(frames):
                frame, timestamp = waiting.popleft()
                yield from hand_on(splitter.push(frame, timestamp, flag))
            frames_seen += len(chunk)
            last_time = float(chunk.timestamps[-1])
        if start is not None and end is None:
            _check_tail(path, info, last_time)
        for flag in shots.finish():
            frame, timestamp = waiting.popleft()
            yield from hand_on(splitter.push(frame, timestamp, flag))
        yield from hand_on(splitter.finish())
    except Exception as exc:  # permanent: recorded; clips emitted before the failure are kept
        if is_transient(exc):
            raise TransientError(f"split of {path}: {one_line(exc)}") from exc
        stage = "probe" if frames_seen == 0 and not emitted and segment == 0 else "decode"
        record_failure(root, path, stage, exc)
        status, error = f"failed in {stage}", one_line(exc)
    if status == "complete" and not emitted and start is None and end is None:
        # a whole video (one segment) too short, or all its shots too short: say why
        error = _no_clip_reason(frames_seen, config)
        record_failure(root, path, "split", error)
        status = "no clips"
    write_segment_record(
        root,
        vid,
        segment,
        {
            "video_id": vid,
            "path": path,
            "segment": segment,
            "start": start,
            "end": end,
            "status": status,
            "error": error,
            "frames": frames_seen,
            "clips": emitted,
            "config_hash": digest,
        },
    )


def _no_clip_reason(frames: int, config: CorpusConfig) -> str:
    if frames < config.min_length:
        return f"too short for a clip: {frames} frames, a clip needs {config.min_length} (min_length)"
    return (
        f"no clip: every shot is shorter than {config.min_length} frames (min_length) "
        f"after trimming {config.trim} frames at each cut"
    )


def _check_tail(path: str, info, last_time: float | None) -> None:
    """The last segment of a split video must reach the stream's end (a truncated file would
    otherwise end quietly: the whole-video truncation check does not cover a range read)."""
    if last_time is not None and info.duration and last_time + 1.0 / info.fps < 0.9 * info.duration - 0.1:
        raise VideoError(path, f"truncated: frames end at {last_time:.2f} s of {info.duration:.2f} s")


def _clip_row(
    row: dict, fps: float, source_width: int, source_height: int, clip, first: int, segment: int
) -> dict:
    return {
        "clip_id": clip_id(row["video_id"], first + clip.start, first + clip.stop),
        "video_id": row["video_id"],
        "segment": segment,
        "shot_id": clip.shot,
        "source_path": row["path"],
        "source": row["source"],
        "license": row["license"],
        "tags": json.dumps(list(row["tags"])),
        "start_frame": first + clip.start,
        "end_frame": first + clip.stop,
        "start_time": clip.start_time,
        "end_time": clip.end_time + 1.0 / fps,
        "fps": fps,
        "source_width": source_width,
        "source_height": source_height,
        "frames": np.ascontiguousarray(clip.frames),  # [T,H,W,3] uint8
    }
