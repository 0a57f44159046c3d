"""Per-clip shards: the source clip, its DVG views, and lossless masks and disparity.

RGB goes through H.264 in RGB 4:4:4 (``libx264rgb``, CRF 17 by default): the source clip is the
training target of the warp-back pair, and 4:2:0 chroma subsampling cost 5-10 dB on saturated
edges in small frames; in RGB it stays near 40 dB. Masks and disparity (anything used as a
target) are stored bit-exactly with FFV1. Paths in the manifest are relative to the corpus root,
so a corpus can be moved or copied to object storage as a whole.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch

from spatialdreamer.data import storage
from spatialdreamer.data.codecs import disparity_from_u16, disparity_to_u16
from spatialdreamer.video import read_lossless, stream_frames, write_lossless

__all__ = ["SHARD_FILES", "ClipArrays", "encode_rgb", "read_clip", "shard_dir", "write_clip"]

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


def encode_rgb(path: str, frames: torch.Tensor, fps: float, crf: int = 17) -> None:
    """Encode ``[T,3,H,W]`` float [0, 1] or uint8 frames as H.264 RGB 4:4:4 at ``path``."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T,3,H,W], got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    pixels = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1001 * 1000))
        stream.width, stream.height, stream.pix_fmt = pixels.shape[2], pixels.shape[1], "rgb24"
        stream.options = {"crf": str(int(crf)), "preset": "fast"}
        for i, image in enumerate(pixels):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_clip(
    root: str, video_id: str, clip_id: str, clip: ClipArrays, fps: float, crf: int = 17
) -> dict[str, str]:
    """Write a clip's files under ``root``; returns manifest column → relative path."""
    relative = {column: f"{shard_dir(video_id, clip_id)}/{name}" for column, name in SHARD_FILES.items()}
    with tempfile.TemporaryDirectory(prefix="spatialdreamer-shard-") as tmp:
        local = {column: os.path.join(tmp, name) for column, name in SHARD_FILES.items()}
        for column, tensor in (("rgb_path", clip.rgb), ("right_path", clip.right), ("back_path", clip.back)):
            encode_rgb(local[column], tensor, fps, crf=crf)
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
