"""Split: probe, decode, shot cuts and clips (a CPU task per video)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.records import (
    TransientError,
    accounted_clips,
    is_transient,
    one_line,
    record_failure,
    video_is_done,
    write_video_record,
)
from spatialdreamer.data import storage
from spatialdreamer.data.ids import clip_id
from spatialdreamer.video import VideoError, probe_video, stream_frames
from spatialdreamer.video.clips import ClipSplitter, resize_and_crop
from spatialdreamer.video.shots import CutDetector

__all__ = ["split_video"]


def split_video(row: dict, root: str, config: CorpusConfig) -> Iterator[dict]:
    """Decode one source video in bounded chunks and cut it into clips at the training size.

    A generator: clips are handed on as soon as they are complete (frames as ``[T,H,W,3]``
    uint8), so memory holds one decode chunk and one clip whatever the video's length. Clips
    never cross a shot cut and keep ``config.trim`` frames away from each cut. Clips already
    accounted for are skipped; a video whose clips are all accounted for is not decoded. A
    permanent failure is recorded with its stage (``probe`` before the first frame, ``decode``
    after), and the clips completed before it are kept; a transient one (storage throttling,
    a lost connection) is raised for Ray to retry the task, and nothing is recorded.
    """
    path, vid = row["path"], row["video_id"]
    digest = config.content_hash()
    if video_is_done(root, vid, digest):
        return
    done = accounted_clips(root, vid)
    emitted: list[str] = []
    status, frames_seen, error = "complete", 0, None
    try:
        with storage.local_copy(path) as local:
            info = probe_video(local)
            if info.is_image:
                raise VideoError(path, "is a still image, not a video")
            splitter = ClipSplitter(config.clip_length, config.stride, config.min_length, config.trim)
            cuts = CutDetector(config.cut_threshold, config.cut_window)

            def hand_on(clips):
                for clip in clips:
                    emitted.append(clip_id(vid, clip.start, clip.stop))
                    if emitted[-1] not in done:
                        yield _clip_row(row, info.fps, info.width, info.height, clip)

            for chunk in stream_frames(local, config.decode_chunk, info=info):
                frames = resize_and_crop(chunk.frames, config.width, config.height)
                flags = cuts(frames)
                for i in range(len(chunk)):
                    yield from hand_on(splitter.push(frames[i], float(chunk.timestamps[i]), flags[i]))
                frames_seen += len(chunk)
            yield from hand_on(splitter.finish())
    except Exception as exc:  # permanent: recorded; clips emitted before the failure are kept
        if is_transient(exc):
            raise TransientError(f"split of {path}: {one_line(exc)}") from exc
        stage = "probe" if frames_seen == 0 and not emitted else "decode"
        record_failure(root, path, stage, exc)
        status, error = f"failed in {stage}", one_line(exc)
    if status == "complete" and not emitted:  # too short or all shots too short: say why
        error = _no_clip_reason(frames_seen, config)
        record_failure(root, path, "split", error)
        status = "no clips"
    write_video_record(
        root,
        {
            "video_id": vid,
            "path": path,
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


def _clip_row(row: dict, fps: float, source_width: int, source_height: int, clip) -> dict:
    return {
        "clip_id": clip_id(row["video_id"], clip.start, clip.stop),
        "video_id": row["video_id"],
        "shot_id": clip.shot,
        "source_path": row["path"],
        "source": row["source"],
        "license": row["license"],
        "tags": json.dumps(list(row["tags"])),
        "start_frame": clip.start,
        "end_frame": clip.stop,
        "start_time": clip.start_time,
        "end_time": clip.end_time + 1.0 / fps,
        "fps": fps,
        "source_width": source_width,
        "source_height": source_height,
        "frames": clip.frames.permute(0, 2, 3, 1).contiguous().numpy(),  # [T,H,W,3] uint8
    }
