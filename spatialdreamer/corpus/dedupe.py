"""Near-duplicate clips across the corpus, from the perceptual hashes the prepare stage stores.

Two hashes within ``bits`` of 64 bits agree exactly on at least one of ``bits + 1`` disjoint
bands (pigeonhole), so candidates are found by bucketing each band's value, never by comparing
every pair. The candidate pairs are still many at corpus scale (with ``bits`` 6 a band has
about 9 bits: ~N²/1100 pairs per band, ~1.3·10⁹ over the 7 bands for 450 k clips), so they are
checked in NumPy, not one by one: 1500 videos x 300 clips take ~40 CPU-s on the driver and a
few tens of MB (``python benchmarks/build_dataset.py --dedupe 450000`` measures it; comparing
pair by pair in Python took ~4 CPU-s for 30 k clips, ~15 min extrapolated to 450 k). Only
three columns of the manifest are read (about 100 bytes per clip, ~45 MB for 450 k clips).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spatialdreamer.data import storage
from spatialdreamer.data.manifest import DUPLICATE_SCHEMA, load_manifest

__all__ = ["mark_duplicates", "near_duplicates"]


def _bands(bits: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, 64, bits + 2).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def near_duplicates(clips: pd.DataFrame, bits: int = 6) -> pd.Series:
    """``duplicate_of`` for each clip (indexed like ``clips``): the first clip, by ID, of another
    video whose ``phash`` differs in at most ``bits`` bits, directly or through a chain of such
    clips; None for a clip that is the first of its group or has no near-duplicate.

    ``clips`` needs ``clip_id``, ``video_id`` and ``phash`` (16 hex digits). Clips of the same
    video are never paired (a static shot gives similar clips that are still different
    moments; ``min_motion`` is the filter for those).

    Example:
        >>> df = pd.DataFrame({"clip_id": ["a-0", "b-0", "c-0"], "video_id": ["a", "b", "c"],
        ...                    "phash": ["ff00ff00ff00ff00", "ff00ff00ff00ff01", "0123456789abcdef"]})
        >>> near_duplicates(df, bits=2).tolist()
        [None, 'a-0', None]
    """
    if bits < 0 or len(clips) == 0:
        return pd.Series([None] * len(clips), index=clips.index, dtype=object)
    order = np.argsort(clips["clip_id"].to_numpy(), kind="stable")
    ids = clips["clip_id"].to_numpy()[order]
    videos = pd.factorize(clips["video_id"].to_numpy()[order])[0]
    texts = clips["phash"].to_numpy()[order]
    valid = np.array([isinstance(h, str) and len(h) == 16 for h in texts], dtype=bool)
    values = np.array([int(h, 16) if ok else 0 for h, ok in zip(texts, valid, strict=True)], dtype=np.uint64)
    pairs = [_close_pairs(values, videos, np.flatnonzero(valid), lo, hi, bits) for lo, hi in _bands(bits)]
    first = _first_of_groups(
        len(ids), np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    )
    out = np.where(first != np.arange(len(ids)), ids[first], None).astype(object)
    result = np.empty(len(ids), dtype=object)
    result[order] = out
    return pd.Series(result, index=clips.index, dtype=object)


def _close_pairs(
    values: np.ndarray, videos: np.ndarray, candidates: np.ndarray, lo: int, hi: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` among ``candidates`` whose hashes agree on bits ``[lo, hi)``, come from
    different videos and differ in at most ``bits`` bits. Vectorised: the candidates sorted by
    their band's value, each is compared with the one ``d`` places on, for d = 1, 2, ... while
    still in the same bucket; the work is the number of pairs in the buckets, in NumPy."""
    mask = np.uint64((1 << (hi - lo)) - 1)
    keys = (values[candidates] >> np.uint64(lo)) & mask
    sort = np.argsort(keys, kind="stable")
    members, keys = candidates[sort], keys[sort]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    bucket_end = np.repeat(ends, ends - starts)
    found_a, found_b = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    active = np.arange(len(keys))
    distance = 1
    while True:
        active = active[active + distance < bucket_end[active]]
        if not len(active):
            break
        a, b = members[active], members[active + distance]
        close = (videos[a] != videos[b]) & (np.bitwise_count(values[a] ^ values[b]) <= bits)
        found_a.append(a[close])
        found_b.append(b[close])
        distance += 1
    return np.concatenate(found_a), np.concatenate(found_b)


def _first_of_groups(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``count`` items, the smallest index of its group (connected through the
    pairs ``(a, b)``): label propagation with pointer jumping, in NumPy."""
    labels = np.arange(count)
    while len(a):
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]  # jump to the label's label
        if np.array_equal(labels, before):
            break
    return labels


def mark_duplicates(root: str, bits: int) -> int:
    """Write ``duplicates/part-0.parquet`` (``clip_id``, ``duplicate_of``) for the corpus at
    ``root``; returns how many clips are duplicates. Rewritten only when it changes, so a rerun
    with nothing to do leaves the corpus untouched. ``bits`` < 0 removes the table."""
    target = storage.join(root, "duplicates", "part-0.parquet")
    if bits < 0:
        storage.remove_tree(storage.join(root, "duplicates"))
        return 0
    clips = load_manifest(root, columns=["clip_id", "video_id", "phash"])
    marked = near_duplicates(clips, bits)
    found = clips.assign(duplicate_of=marked)[marked.notna()][["clip_id", "duplicate_of"]]
    buffer = io.BytesIO()
    table = pa.Table.from_pandas(found.reset_index(drop=True), schema=DUPLICATE_SCHEMA, preserve_index=False)
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    if not storage.exists(target) or storage.read_bytes(target) != data:
        storage.write_bytes(target, data)
    return len(found)
