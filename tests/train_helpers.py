"""A tiny stereo corpus written directly (shards + manifest part), without Ray or depth models."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq

from spatialdreamer.data.manifest import CLIP_SCHEMA
from spatialdreamer.data.shards import ClipArrays, write_clip
from spatialdreamer.dvg.sample import make_dvg_sample
from spatialdreamer.synth import make_scene

# (video, clip, scene seed, frames): one clip shorter than the tiny config's 4-frame window
CLIPS = (("vid0", "vid0-c0", 0, 6), ("vid0", "vid0-c1", 1, 6), ("vid1", "vid1-c0", 2, 3))
HEIGHT, WIDTH, FPS = 40, 64, 12.0


def write_corpus(root: str | os.PathLike) -> list[dict]:
    """Write :data:`CLIPS` as a corpus under ``root``; returns the manifest rows."""
    root = os.fspath(root)
    rows = []
    for vid, cid, seed, frames in CLIPS:
        scene = make_scene(seed, height=HEIGHT, width=WIDTH, frames=frames)
        sample = make_dvg_sample(scene.left, scene.disparity, refine_masks=False)
        arrays = ClipArrays(
            rgb=scene.left,
            right=sample.right,
            right_holes=sample.right_holes,
            back=sample.back,
            back_holes=sample.back_holes,
            disparity=sample.disparity,
        )
        paths = write_clip(root, vid, cid, arrays, FPS)
        d = sample.disparity
        rows.append(
            {
                "clip_id": cid,
                "video_id": vid,
                "shot_id": 0,
                "source_path": f"synth://{seed}",
                "source": "synth",
                "license": "CC0",
                "tags": ["synth"],
                "start_frame": 0,
                "end_frame": frames,
                "num_frames": frames,
                "start_time": 0.0,
                "end_time": frames / FPS,
                "duration": frames / FPS,
                "fps": FPS,
                "width": WIDTH,
                "height": HEIGHT,
                "source_width": WIDTH,
                "source_height": HEIGHT,
                "depth_model": "synth",
                "budget": 3.0,
                "disparity_p05": float(d.quantile(0.05)),
                "disparity_p50": float(d.quantile(0.5)),
                "disparity_p95": float(d.quantile(0.95)),
                "hole_ratio": float(sample.back_holes.float().mean()),
                "right_hole_ratio": float(sample.right_holes.float().mean()),
                "motion_score": 1.0,
                **paths,
                "config_hash": "test",
                "created_time": dt.datetime(2026, 11, 25, tzinfo=dt.UTC),
            }
        )
    os.makedirs(os.path.join(root, "manifest"), exist_ok=True)
    for vid in sorted({r["video_id"] for r in rows}):
        part = [r for r in rows if r["video_id"] == vid]
        pq.write_table(
            pa.Table.from_pylist(part, schema=CLIP_SCHEMA),
            os.path.join(root, "manifest", f"part-{vid}.parquet"),
        )
    return rows
