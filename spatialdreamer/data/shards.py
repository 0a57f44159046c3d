"""Per-clip shards: the source clip, its DVG views, and lossless masks and disparity.

RGB goes through a visually lossless H.264; masks and disparity (anything used as a target)
are stored bit-exactly with FFV1. Paths in the manifest are relative to the corpus root, so a
corpus can be moved or copied to object storage as a whole.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from spatialdreamer.data import storage
from spatialdreamer.data.codecs import disparity_from_u16, disparity_to_u16
from spatialdreamer.video import VideoWriter, read_lossless, stream_frames, write_lossless

__all__ = ["SHARD_FILES", "ClipArrays", "read_clip", "shard_dir", "write_clip"]

# manifest column -> file name inside the clip's shard folder
SHARD_FILES = {
    "rgb_path": "rgb.mp4",
    "right_path": "right.mp4",
    "right_mask_path": "right_holes.mkv",
    "back_path": "back.mp4",
    "back_mask_path": "back_holes.mkv",
    "disparity_path": "disparity.mkv",
}


@dataclass
class ClipArrays:
    """One clip's tensors: RGB ``[T,3,H,W]`` float in [0, 1], masks ``[T,1,H,W]`` bool
    (True = hole), ``disparity`` ``[T,1,H,W]`` pixels (left view)."""

    rgb: torch.Tensor
    right: torch.Tensor
    right_holes: torch.Tensor
    back: torch.Tensor
    back_holes: torch.Tensor
    disparity: torch.Tensor


def shard_dir(video_id: str, clip_id: str) -> str:
    return f"shards/{video_id}/{clip_id}"


def write_clip(
    root: str, video_id: str, clip_id: str, clip: ClipArrays, fps: float, crf: int = 17
) -> dict[str, str]:
    """Write a clip's files under ``root``; returns manifest column → relative path."""
    relative = {column: f"{shard_dir(video_id, clip_id)}/{name}" for column, name in SHARD_FILES.items()}
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-shard-") as tmp:
        local = {column: os.path.join(tmp, name) for column, name in SHARD_FILES.items()}
        for column, tensor in (("rgb_path", clip.rgb), ("right_path", clip.right), ("back_path", clip.back)):
            with VideoWriter(local[column], fps, crf=crf) as writer:
                writer.write(tensor)
        write_lossless(local["right_mask_path"], clip.right_holes[:, 0], fps)
        write_lossless(local["back_mask_path"], clip.back_holes[:, 0], fps)
        write_lossless(local["disparity_path"], disparity_to_u16(clip.disparity[:, 0]), fps)
        for column in SHARD_FILES:
            storage.upload(local[column], storage.join(root, relative[column]))
    return relative


def read_clip(root: str, row: dict) -> ClipArrays:
    """Load a clip written by :func:`write_clip` from its manifest row."""

    def rgb(column: str) -> torch.Tensor:
        with storage.local_copy(storage.join(root, row[column])) as path:
            frames = torch.cat([c.frames for c in stream_frames(path, chunk_size=64)])
        return frames[..., : row["height"], : row["width"]].float() / 255.0

    def lossless(column: str) -> np.ndarray:
        with storage.local_copy(storage.join(root, row[column])) as path:
            return read_lossless(path)

    return ClipArrays(
        rgb=rgb("rgb_path"),
        right=rgb("right_path"),
        right_holes=torch.from_numpy(lossless("right_mask_path") > 127).unsqueeze(1),
        back=rgb("back_path"),
        back_holes=torch.from_numpy(lossless("back_mask_path") > 127).unsqueeze(1),
        disparity=torch.from_numpy(disparity_from_u16(lossless("disparity_path"))).unsqueeze(1),
    )
