"""Near-duplicate clips across the corpus, from the perceptual hashes the prepare stage stores.

Two hashes within ``bits`` of 64 bits agree exactly on at least one of ``bits + 1`` disjoint
bands (pigeonhole), so candidates are found by bucketing each band's value, never by comparing
every pair: linear in the clips plus the (few) candidate pairs. Only three columns of the
manifest are read (about 100 bytes per clip, ~30 MB for 300 k clips).
"""

from __future__ import annotations

import io
from collections import defaultdict

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
    videos = clips["video_id"].to_numpy()[order]
    texts = clips["phash"].to_numpy()[order]
    valid = np.array([isinstance(h, str) and len(h) == 16 for h in texts], dtype=bool)
    values = np.array([int(h, 16) if ok else 0 for h, ok in zip(texts, valid, strict=True)], dtype=np.uint64)
    parent = np.arange(len(ids))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for lo, hi in _bands(bits):
        mask = np.uint64((1 << (hi - lo)) - 1)
        keys = (values >> np.uint64(lo)) & mask
        buckets: dict[int, list[int]] = defaultdict(list)
        for i in np.flatnonzero(valid):
            buckets[int(keys[i])].append(int(i))
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1 :]:
                    if videos[a] == videos[b] or bin(int(values[a]) ^ int(values[b])).count("1") > bits:
                        continue
                    ra, rb = find(a), find(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)  # the root is the group's first clip by ID
    roots = np.array([find(i) for i in range(len(ids))])
    out = np.array([ids[r] if r != i else None for i, r in enumerate(roots)], dtype=object)
    result = np.empty(len(ids), dtype=object)
    result[order] = out
    return pd.Series(result, index=clips.index, dtype=object)


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
