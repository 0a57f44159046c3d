"""Write: encode a clip's shard files and commit its row record (a CPU task per clip).

The files land loose under ``shards/<video>/<clip>/`` and the row record last (the clip's
commit); :mod:`spatialdreamer.corpus.pack` later packs each finished segment into one tar."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from spatialdreamer.corpus.batches import unpack_mask
from spatialdreamer.corpus.config import CorpusConfig
from spatialdreamer.corpus.records import now, record_failure, retry_transient, to_json
from spatialdreamer.data import storage
from spatialdreamer.data.shards import SHARD_FILES, encode_rgb_array, shard_dir
from spatialdreamer.video import write_lossless

__all__ = ["SCORE_COLUMNS", "write_clip_files", "write_clip_stage"]

#: per-clip scores carried from the stages into the manifest row, as floats
SCORE_COLUMNS = (
    "budget",
    "disparity_p05",
    "disparity_p50",
    "disparity_p95",
    "depth_p05",
    "depth_p50",
    "depth_p95",
    "depth_edges",
    "hole_ratio",
    "right_hole_ratio",
    "motion_score",
    "camera_motion",
    "brightness",
    "sharpness",
    "black_border",
)


def write_clip_files(root: str, batch: dict, i: int) -> dict[str, str]:
    """Write clip ``i``'s shard files under ``root``; returns manifest column → relative path.

    The source clip arrives encoded (``rgb_mp4``) and is written as is; the views are encoded
    here, masks and disparity stored losslessly. Uploads retry transient storage errors.
    """
    vid, cid = str(batch["video_id"][i]), str(batch["clip_id"][i])
    fps = float(batch["fps"][i])
    width = int(np.asarray(batch["right"][i]).shape[2])
    relative = {column: f"{shard_dir(vid, cid)}/{name}" for column, name in SHARD_FILES.items()}
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-shard-") as tmp:
        local = {column: os.path.join(tmp, name) for column, name in SHARD_FILES.items()}
        with open(local["rgb_path"], "wb") as handle:
            handle.write(bytes(batch["rgb_mp4"][i]))
        for column, key in (("right_path", "right"), ("back_path", "back")):
            pixels = np.ascontiguousarray(batch[key][i], dtype=np.uint8)
            encode_rgb_array(local[column], pixels, fps, crf=int(batch["crf"][i]))
        for column, key in (("right_mask_path", "right_holes_bits"), ("back_mask_path", "back_holes_bits")):
            write_lossless(local[column], unpack_mask(batch[key][i], width), fps)
        write_lossless(local["disparity_path"], np.asarray(batch["disparity_u16"][i], dtype=np.uint16), fps)
        for column in SHARD_FILES:
            target = storage.join(root, relative[column])
            retry_transient(lambda c=column, t=target: storage.upload(local[c], t), f"uploading {target}")
    return relative


def write_clip_stage(batch: dict[str, np.ndarray], root: str, config: CorpusConfig) -> dict[str, np.ndarray]:
    """Encode each clip's shard files, then write its row record last: the row is the clip's
    commit, so a clip with a row has complete shards, and a clip without one is redone."""
    done_ids, done_frames = [], []
    digest = config.content_hash()
    batch = {**batch, "crf": np.full(len(batch["clip_id"]), config.crf)}
    for i, cid in enumerate(batch["clip_id"]):
        cid, vid = str(cid), str(batch["video_id"][i])
        try:
            paths = write_clip_files(root, batch, i)
            right = np.asarray(batch["right"][i])
            n, fps = int(right.shape[0]), float(batch["fps"][i])
            record = {
                "clip_id": cid,
                "video_id": vid,
                "segment": int(batch["segment"][i]),
                "shot_id": int(batch["shot_id"][i]),
                "source_path": str(batch["source_path"][i]),
                "source": str(batch["source"][i]),
                "license": str(batch["license"][i]),
                "tags": json.loads(str(batch["tags"][i])),
                "start_frame": int(batch["start_frame"][i]),
                "end_frame": int(batch["end_frame"][i]),
                "num_frames": n,
                "start_time": float(batch["start_time"][i]),
                "end_time": float(batch["end_time"][i]),
                "duration": n / fps,
                "fps": fps,
                "width": int(right.shape[2]),
                "height": int(right.shape[1]),
                "source_width": int(batch["source_width"][i]),
                "source_height": int(batch["source_height"][i]),
                "depth_model": str(batch["depth_model"][i]),
                **{key: float(batch[key][i]) for key in SCORE_COLUMNS},
                "phash": str(batch["phash"][i]),
                **paths,
                "config_hash": digest,
                "created_time": now(),
            }
            target = storage.join(root, "_rows", vid, f"{cid}.json")
            retry_transient(
                lambda t=target, r=record: storage.write_bytes(t, to_json(r)), f"writing {target}"
            )
            done_ids.append(cid)
            done_frames.append(n)
        except Exception as exc:  # permanent: recorded (transient ones are raised for a retry)
            record_failure(root, str(batch["source_path"][i]), "write", exc, clip=cid)
    return {"clip_id": np.array(done_ids, dtype=object), "num_frames": np.array(done_frames, dtype=np.int64)}
