"""Near-duplicate clips across videos: phash bands, duplicate_of in the manifest."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.build_dataset import load_config
from spatialdreamer.corpus import mark_duplicates, near_duplicates
from spatialdreamer.data import load_manifest


def _flip(value: str, bits: list[int]) -> str:
    number = int(value, 16)
    for bit in bits:
        number ^= 1 << bit
    return f"{number:016x}"


def test_near_duplicates_pair_clips_of_other_videos_within_the_bit_budget():
    base = "f0e1d2c3b4a59687"
    clips = pd.DataFrame(
        {
            "clip_id": ["a-1", "a-0", "b-0", "c-0", "d-0", "e-0", "a-2"],
            "video_id": ["a", "a", "b", "c", "d", "e", "a"],
            "phash": [
                _flip(base, [63]),  # same video as a-0: never paired with it directly
                base,
                _flip(base, [0, 9, 18, 27, 36, 45]),  # 6 bits off a-0, spread over every band
                _flip(base, [0, 9, 18, 27, 36, 45, 54]),  # 7 bits off a-0, 1 off b-0: a chain
                "0123456789abcdef",  # unrelated
                "",  # no hash (a clip written before hashes): never a duplicate
                _flip(base, [1, 2, 3, 4, 5, 6, 7]),  # 7 bits off a-0, same video: not paired
            ],
        },
        index=[10, 11, 12, 13, 14, 15, 16],
    )
    marked = near_duplicates(clips, bits=6)
    assert list(marked.index) == list(clips.index)
    assert marked.tolist() == [None, None, "a-0", "a-0", None, None, None]
    assert near_duplicates(clips, bits=5).tolist() == [None, None, None, "b-0", None, None, None]
    assert near_duplicates(clips, bits=-1).isna().all()
    assert near_duplicates(clips.iloc[:0], bits=6).empty


def test_duplicates_table_joins_the_manifest_and_is_rewritten_only_on_change(corpus, tmp_path):
    import shutil

    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    # the test corpus has no hashes: none is a duplicate, and the column is there all the same
    assert mark_duplicates(str(root), 6) == 0
    clips = load_manifest(str(root))
    assert "duplicate_of" in clips.columns and clips.duplicate_of.isna().all()
    part = root / "duplicates" / "part-0.parquet"
    before = part.stat().st_mtime_ns
    assert mark_duplicates(str(root), 6) == 0 and part.stat().st_mtime_ns == before
    # columns may be asked for; duplicate_of comes from its own table
    slim = load_manifest(str(root), columns=["hole_ratio", "duplicate_of"])
    assert list(slim.columns) == ["clip_id", "hole_ratio", "duplicate_of"]
    assert mark_duplicates(str(root), -1) == 0 and not part.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("segment_seconds", -1.0, "segment_seconds"),
        ("dedupe_bits", 40, "dedupe_bits"),
        ("dedupe_bits", 2.5, "dedupe_bits"),
    ],
)
def test_bad_segment_and_dedupe_settings_are_one_line_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", {key: value})


def _brute_force(clips: pd.DataFrame, bits: int) -> list:
    """Every pair compared, groups joined transitively, each pointing at its first clip by ID."""
    rows = clips.sort_values("clip_id").reset_index(drop=True)
    values = [int(h, 16) for h in rows.phash]
    group = list(range(len(rows)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            close = bin(values[a] ^ values[b]).count("1") <= bits
            if close and rows.video_id[a] != rows.video_id[b]:
                ra, rb = root(a), root(b)
                group[max(ra, rb)] = min(ra, rb)
    first = {cid: rows.clip_id[root(i)] for i, cid in enumerate(rows.clip_id)}
    return [first[c] if first[c] != c else None for c in clips.clip_id]


def test_near_duplicates_match_comparing_every_pair_on_hashes_that_share_bands():
    import numpy as np

    rng = np.random.default_rng(3)
    # few distinct band values so that buckets are large and chains form across videos
    base = rng.integers(0, 2**63, 12, dtype=np.int64)
    values = []
    for i in range(400):
        v = int(base[i % 12])
        for bit in rng.choice(64, rng.integers(0, 12), replace=False):
            v ^= 1 << int(bit)
        values.append(v)
    clips = pd.DataFrame(
        {
            "clip_id": [f"v{i % 37:02d}-{i:04d}" for i in range(400)],
            "video_id": [f"v{i % 37:02d}" for i in range(400)],
            "phash": [f"{v:016x}" for v in values],
        }
    ).sample(frac=1, random_state=0)  # any row order
    for bits in (0, 3, 6):
        assert near_duplicates(clips, bits).tolist() == _brute_force(clips, bits), bits
