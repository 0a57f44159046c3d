"""A torch ``Dataset`` of warp-back training samples over a corpus manifest.

Each item is one window of ``num_frames`` frames from one clip, in the layout
:func:`spatialdreamer.models.losses.training_losses` takes (after collation adds ``B``):

* ``rendered`` ``[T,3,H,W]`` float32 in [0, 1]: the warp-back view, its holes pre-filled by
  :func:`~spatialdreamer.models.reference.rendered_view` as at inference, the input;
* ``mask`` ``[T,1,H,W]`` bool: its holes (True = hole), the input mask;
* ``target`` ``[T,3,H,W]`` float32 in [0, 1]: the source frames, the ground truth;
* ``disparity`` ``[T,1,H,W]`` float32: the source eye's disparity divided by the window's
  maximum (it picks the background side of each hole; not a model input);
* ``reference`` ``[T,3,H,W]`` float32 in [0, 1]: the other-eye view (the source forward-warped),
  what RefinerNet encodes, made complete by
  :func:`~spatialdreamer.models.reference.reference_view` exactly as at inference, where the
  reference is the (complete) source eye. Warp-back training mirrors inference, so the
  reference must not be the target (``s(z₀) = |z₀ − z_ref|`` would be zero and RefinerNet
  would learn to copy).

Only the manifest rows are held; shards are decoded in ``__getitem__``, so memory is one clip
per loader worker whatever the corpus size. A clip of a packed corpus (the corpus job's output)
is one ranged read of its segment's tar; a loose clip is six file reads.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spatialdreamer.data.manifest import load_manifest
from spatialdreamer.data.shards import SHARD_FILES, ClipArrays, read_clip
from spatialdreamer.models.reference import reference_view, rendered_view

__all__ = ["SAMPLE_KEYS", "StereoClipDataset", "fit_frames", "resize_cover"]

SAMPLE_KEYS = ("target", "rendered", "mask", "reference")
_ROW_COLUMNS = ["clip_id", "num_frames", "width", "height", *SHARD_FILES]
_PACK_COLUMNS = ["shard", "shard_offset", "shard_size"]  # absent or null: loose files
_MAX_SUBSTITUTES = 16

log = logging.getLogger("spatialdreamer.data.dataset")


def fit_frames(x: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``count`` frames of ``x`` ``[T,...]`` from ``start``; a short clip repeats its last frame
    (padding that keeps motion plausible, unlike black frames)."""
    window = x[start : start + count]
    if window.shape[0] < count:
        pad = window[-1:].expand(count - window.shape[0], *window.shape[1:])
        window = torch.cat([window, pad])
    return window


def resize_cover(x: torch.Tensor, size: tuple[int, int], *, mask: bool = False) -> torch.Tensor:
    """Scale ``[T,C,h,w]`` to cover ``size`` ``(H, W)`` keeping the aspect ratio, then centre-crop.

    Images use antialiased bilinear resampling. Masks (bool) are dilated on the way down: an
    output pixel is a hole if any hole pixel falls in its footprint, so no resampled hole-border
    colour ever counts as valid.
    """
    height, width = size
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new = (max(height, round(h * scale)), max(width, round(w * scale)))
        if new != (h, w):
            if mask:
                mode = "area" if scale < 1 else "nearest"
                x = F.interpolate(x.float(), size=new, mode=mode) > 0
            else:
                x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
                x = x.clamp(0.0, 1.0)
        top, left = (new[0] - height) // 2, (new[1] - width) // 2
        x = x[..., top : top + height, left : left + width]
    return x.contiguous()


@dataclass(frozen=True)
class _Window:
    row: int
    start: int


class StereoClipDataset(Dataset):
    """Warp-back samples of a corpus: fixed-length windows, fixed size, decoded lazily.

    Args:
        root: corpus root (local or pyarrow URI) written by ``pipelines.build_dataset``.
        num_frames: frames per sample ``T``. Clips shorter than ``T`` repeat their last frame.
        size: ``(H, W)`` of the samples (scale to cover, centre crop); ``None`` keeps each clip's
            size (then all clips must share it to be batched).
        query: a pandas ``DataFrame.query`` over the manifest, e.g. ``"hole_ratio < 0.2"``.
        stride: frames between window starts within a clip (default ``num_frames``: disjoint
            windows); windows start at 0, so cropping is deterministic.
        manifest: an already loaded (and filtered) manifest instead of reading ``root``'s.
        cache_clips: decoded clips kept in memory per process (least recently used first out);
            0 = decode on every access. A clip holds many windows (every frame is one in the
            ``frames`` stage), so a cache saves most decoding on corpora that fit in memory.

    Example:
        >>> ds = StereoClipDataset("corpus/", num_frames=8, size=(256, 384))  # doctest: +SKIP
        >>> ds[0]["rendered"].shape  # doctest: +SKIP
        torch.Size([8, 3, 256, 384])
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int,
        size: tuple[int, int] | None = None,
        *,
        query: str | None = None,
        stride: int | None = None,
        manifest: pd.DataFrame | None = None,
        cache_clips: int = 0,
    ) -> None:
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
        stride = num_frames if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if size[0] < 8 or size[1] < 8:
                raise ValueError(f"size must be (H, W) of at least 8x8, got {size}")
        self.root = os.fspath(root)
        self.num_frames, self.size, self.stride = num_frames, size, stride
        frame = load_manifest(self.root) if manifest is None else manifest
        total = len(frame)
        if query:
            try:
                frame = frame.query(query)
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(f"bad query {query!r}: {reason}") from exc
        if len(frame) == 0:
            what = f"match query {query!r}" if query else "are listed"
            raise ValueError(f"no clips in {self.root} {what} ({total} clips in the manifest)")
        missing = [c for c in _ROW_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"manifest of {self.root} lacks columns {missing}")
        self.rows: list[dict] = frame.reindex(columns=_ROW_COLUMNS + _PACK_COLUMNS).to_dict("records")
        self.windows = [
            _Window(i, start)
            for i, row in enumerate(self.rows)
            for start in range(0, max(int(row["num_frames"]) - num_frames, 0) + 1, stride)
        ]
        if size is None and len({(r["height"], r["width"]) for r in self.rows}) > 1:
            raise ValueError("clips of different sizes cannot be batched; pass size=(H, W)")
        self._unreadable: set[str] = set()  # per process (each loader worker learns its own)
        if not isinstance(cache_clips, int) or cache_clips < 0:
            raise ValueError(f"cache_clips must be an integer >= 0, got {cache_clips!r}")
        self.cache_clips = cache_clips
        self._cache: OrderedDict[str, ClipArrays] = OrderedDict()

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def clip_ids(self) -> list[str]:
        return [str(r["clip_id"]) for r in self.rows]

    def __getitem__(self, index: int) -> dict:
        errors = []
        for offset in range(min(_MAX_SUBSTITUTES, len(self.windows))):
            window = self.windows[(index + offset) % len(self.windows)]
            row = self.rows[window.row]
            if row["clip_id"] in self._unreadable:
                continue
            try:
                return self._sample(window, row)
            except Exception as exc:  # recorded; the next window stands in
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._unreadable.add(row["clip_id"])
                errors.append(f"{row['clip_id']}: {reason}")
                log.warning("skipping unreadable clip %s (%s)", row["clip_id"], reason)
        raise RuntimeError(f"no readable clip near sample {index} of {self.root}: {'; '.join(errors)[:500]}")

    def _clip(self, row: dict) -> ClipArrays:
        key = str(row["clip_id"])
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        clip = read_clip(self.root, row)
        if self.cache_clips:
            self._cache[key] = clip
            while len(self._cache) > self.cache_clips:
                self._cache.popitem(last=False)
        return clip

    def _sample(self, window: _Window, row: dict) -> dict:
        clip = self._clip(row)
        size = self.size or (int(row["height"]), int(row["width"]))

        def frames(x: torch.Tensor, mask: bool = False) -> torch.Tensor:
            return resize_cover(fit_frames(x, window.start, self.num_frames), size, mask=mask)

        mask, right_holes = frames(clip.back_holes, True), frames(clip.right_holes, True)
        window_disparity = fit_frames(clip.disparity, window.start, self.num_frames)
        span = window_disparity.amax().clamp(min=1e-6)  # resize_cover works in [0, 1]
        disparity = resize_cover(window_disparity / span, size)
        return {
            "target": frames(clip.rgb),
            "rendered": rendered_view(frames(clip.back), mask, disparity),
            "mask": mask,
            "reference": reference_view(frames(clip.right), right_holes),
            "disparity": disparity,  # of the source eye, ÷ its window maximum (order is what counts)
            "clip_id": str(row["clip_id"]),
            "start": window.start,
        }
