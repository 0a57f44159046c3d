"""Batch dicts as Ray Data hands them to ``map_batches`` stages, and the compact encodings that
cross the object store between stages (uint8 frames, bit-packed masks, uint16 disparity)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["column", "pack_mask", "rows_to_batch", "select", "tensor", "unpack_mask", "view_tensor"]


def column(values: list) -> np.ndarray:
    """A batch column: stacked when the arrays share a shape, else an object array (ragged)."""
    if values and isinstance(values[0], np.ndarray) and values[0].ndim > 0:
        if len(values) == 1:  # a view, not a copy (a batch of one clip is the common case)
            return values[0][None]
        if all(v.shape == values[0].shape and v.dtype == values[0].dtype for v in values):
            return np.stack(values)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    if values and isinstance(values[0], str | bytes):
        return np.array(values, dtype=object)
    return np.array(values)


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows → a batch dict (what Ray Data hands a ``map_batches`` stage)."""
    return {key: column([r[key] for r in rows]) for key in rows[0]}


def select(batch: dict[str, np.ndarray], keep: list[int], drop: tuple[str, ...] = ()) -> dict[str, list]:
    """The rows ``keep`` of a batch as lists per column, without the columns in ``drop``."""
    return {key: [values[i] for i in keep] for key, values in batch.items() if key not in drop}


def tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
    """A tensor of a batch column's entry (copied: Ray hands out read-only views of its store)."""
    import torch

    return torch.from_numpy(np.array(a, dtype=dtype, copy=True))


def view_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing a batch entry's memory, without a copy. Ray's object store hands out
    read-only arrays: the tensor must only be read (e.g. moved to a device or converted)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(a))


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """``[T,H,W]`` bool → ``[T,H,ceil(W/8)]`` uint8, 8 pixels a byte, first pixel in the high
    bit (as ``np.packbits``). Packed where the mask is (on a GPU, 1/8 of it crosses to the host).

    Example:
        >>> import torch
        >>> pack_mask(torch.tensor([[[True] + [False] * 8]])).tolist()
        [[[128, 0]]]
    """
    if mask.device.type == "cpu":
        return np.packbits(mask.numpy().astype(bool, copy=False), axis=-1)
    return pack_bits_on_device(mask).cpu().numpy()


def pack_bits_on_device(mask: torch.Tensor) -> torch.Tensor:
    """:func:`pack_mask` in torch, where the mask is (same bit order as ``np.packbits``)."""
    import torch
    import torch.nn.functional as F

    t, h, w = mask.shape
    bits = F.pad(mask.to(torch.uint8), (0, -w % 8)).view(t, h, -1, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`: ``[T,H,W]`` bool."""
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), axis=-1, count=width).astype(bool)
