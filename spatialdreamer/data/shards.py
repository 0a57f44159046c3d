"""Clip shards: the source clip, its DVG views, and lossless masks and disparity.

A clip is six files. The corpus job writes them loose (``shards/<video>/<clip>/``) while it
runs, then packs each segment's clips into one tar (:func:`pack_clips`, WebDataset layout:
members ``<clip_id>.<name>`` in clip order), so a corpus has one file per segment instead of
six per clip, and the manifest row's ``shard``/``shard_offset``/``shard_size`` give the byte
range holding all six files of the clip: a training sample is one ranged read.

RGB goes through H.264 in RGB 4:4:4 (``libx264rgb``, CRF 17 by default): the source clip is the
training target of the warp-back pair, and 4:2:0 chroma subsampling cost 5-10 dB on saturated
edges in small frames; in RGB it stays near 40 dB. Masks and disparity (anything used as a
target) are stored bit-exactly with FFV1. Paths in the manifest are relative to the corpus root,
so a corpus can be moved or copied to object storage as a whole.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np

from spatialdreamer.data import storage
from spatialdreamer.data.codecs import disparity_from_u16, disparity_to_u16
from spatialdreamer.video import read_lossless, stream_frames, write_lossless

if TYPE_CHECKING:
    import torch

__all__ = [
    "SHARD_FILES",
    "ClipArrays",
    "PackedClip",
    "encode_rgb",
    "encode_rgb_array",
    "pack_clips",
    "read_clip",
    "shard_dir",
    "write_clip",
]

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
    import torch

    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T,3,H,W], got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    encode_rgb_array(path, frames.permute(0, 2, 3, 1).contiguous().cpu().numpy(), fps, crf)


def encode_rgb_array(path: str, pixels: np.ndarray, fps: float, crf: int = 17) -> None:
    """:func:`encode_rgb` of ``[T,H,W,3]`` uint8 frames (channel last), without torch."""
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be [T,H,W,3] uint8, got {pixels.shape} {pixels.dtype}")
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


@dataclass(frozen=True)
class PackedClip:
    """Where a clip's files sit in a pack: the byte range ``[offset, offset + size)`` of the
    tar covers its members (headers included) and ``members`` maps manifest column → name."""

    offset: int
    size: int
    members: dict[str, str]


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # fixed metadata: the same clips always give the same bytes
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def pack_clips(tar_path: str, clips: dict[str, dict[str, str]]) -> dict[str, PackedClip]:
    """Write the loose files of ``clips`` (clip ID → manifest column → local file) into one
    uncompressed tar at the local ``tar_path``, clips in ID order; returns each clip's range.

    Members are named ``<clip_id>.<file name>`` (e.g. ``…-000016.rgb.mp4``), the WebDataset
    convention, so the pack also streams with WebDataset-style readers.
    """
    placed: dict[str, PackedClip] = {}
    with (
        open(tar_path, "wb") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for cid in sorted(clips):
            start, members = tar.offset, {}
            for column, name in SHARD_FILES.items():
                local = clips[cid][column]
                member = f"{cid}.{name}"
                with open(local, "rb") as data:
                    tar.addfile(_member_info(member, os.path.getsize(local)), data)
                members[column] = member
            placed[cid] = PackedClip(start, tar.offset - start, members)
    return placed


def _decode_rgb(data: bytes, height: int, width: int) -> torch.Tensor:
    import torch

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    if not frames:
        raise ValueError("an RGB shard member has no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[..., :height, :width].float() / 255.0


def _decode_lossless(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fmt = "gray16le" if stream.codec_context.pix_fmt == "gray16le" else "gray"
        planes = [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]
    if not planes:
        raise ValueError("a lossless shard member has no frames")
    return np.stack(planes)


def _packed_members(root: str, row: dict) -> dict[str, bytes]:
    """The clip's six files from its pack, with one ranged read."""
    offset, size = int(row["shard_offset"]), int(row["shard_size"])
    data = storage.read_range(storage.join(root, row["shard"]), offset, size)
    if len(data) != size:
        raise ValueError(
            f"{row['shard']}: expected {size} bytes at {offset}, got {len(data)} (truncated pack)"
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            found = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError as exc:
        raise ValueError(
            f"{row['shard']}: no clip members at bytes {offset}..{offset + size} ({exc})"
        ) from exc
    missing = [row[c] for c in SHARD_FILES if row[c] not in found]
    if missing:
        raise ValueError(f"{row['shard']}: members {missing} not at bytes {offset}..{offset + size}")
    return {column: found[row[column]] for column in SHARD_FILES}


def _is_packed(row: dict) -> bool:
    shard = row.get("shard")
    return isinstance(shard, str) and bool(shard)


def read_clip(root: str, row: dict) -> ClipArrays:
    """Load a clip from its manifest row: from its pack (one ranged read) when ``shard`` is set,
    else from its loose files (written by :func:`write_clip`)."""
    import torch

    height, width = int(row["height"]), int(row["width"])
    if _is_packed(row):
        members = _packed_members(root, row)
        return ClipArrays(
            rgb=_decode_rgb(members["rgb_path"], height, width),
            right=_decode_rgb(members["right_path"], height, width),
            right_holes=torch.from_numpy(_decode_lossless(members["right_mask_path"]) > 127).unsqueeze(1),
            back=_decode_rgb(members["back_path"], height, width),
            back_holes=torch.from_numpy(_decode_lossless(members["back_mask_path"]) > 127).unsqueeze(1),
            disparity=torch.from_numpy(
                disparity_from_u16(_decode_lossless(members["disparity_path"]))
            ).unsqueeze(1),
        )

    def rgb(column: str) -> torch.Tensor:
        with storage.local_copy(storage.join(root, row[column])) as path:
            frames = torch.cat([c.frames for c in stream_frames(path, chunk_size=64)])
        return frames[..., :height, :width].float() / 255.0

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
