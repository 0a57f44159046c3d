"""Packed shards: a segment's clips in one tar, one ranged read per clip, clear errors."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from spatialdreamer.data import load_manifest, storage
from spatialdreamer.data.dataset import StereoClipDataset
from spatialdreamer.data.manifest import CLIP_SCHEMA
from spatialdreamer.data.shards import SHARD_FILES, pack_clips, read_clip


def _pack_corpus(loose: str, packed: Path) -> None:
    """The loose test corpus packed as the corpus job packs it: one tar per video."""
    rows = load_manifest(loose).drop(columns="duplicate_of").to_dict("records")
    (packed / "shards").mkdir(parents=True)
    for vid in sorted({r["video_id"] for r in rows}):
        mine = [r for r in rows if r["video_id"] == vid]
        files = {r["clip_id"]: {c: str(Path(loose) / r[c]) for c in SHARD_FILES} for r in mine}
        placed = pack_clips(str(packed / "shards" / f"{vid}.tar"), files)
        for r in mine:
            where = placed[r["clip_id"]]
            r.update(
                where.members, shard=f"shards/{vid}.tar", shard_offset=where.offset, shard_size=where.size
            )
        (packed / "manifest" / vid).mkdir(parents=True)
        table = pa.Table.from_pandas(pd.DataFrame(mine), schema=CLIP_SCHEMA, preserve_index=False)
        pq.write_table(table, packed / "manifest" / vid / "part-0000.parquet")


@pytest.fixture(scope="module")
def packed(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    _pack_corpus(corpus, root)
    return root


def test_a_pack_is_a_webdataset_tar_of_whole_clips_and_is_deterministic(corpus, packed, tmp_path):
    with tarfile.open(packed / "shards" / "vid0.tar") as tar:
        names = tar.getnames()
    assert names == [f"{cid}.{name}" for cid in ("vid0-c0", "vid0-c1") for name in SHARD_FILES.values()]
    _pack_corpus(corpus, tmp_path / "again")
    assert (tmp_path / "again" / "shards" / "vid0.tar").read_bytes() == (
        packed / "shards" / "vid0.tar"
    ).read_bytes()


def test_a_packed_clip_is_one_ranged_read_and_equals_its_loose_files(corpus, packed, monkeypatch):
    reads, copies = [], []
    real_range, real_copy = storage.read_range, storage.local_copy
    monkeypatch.setattr(storage, "read_range", lambda *a: reads.append(a) or real_range(*a))
    monkeypatch.setattr(storage, "local_copy", lambda *a: copies.append(a) or real_copy(*a))
    loose = load_manifest(corpus).set_index("clip_id")
    for row in load_manifest(str(packed)).to_dict("records"):
        reads.clear()
        copies.clear()
        got = read_clip(str(packed), row)
        assert len(reads) == 1 and not copies  # one ranged read, no file copied or opened per stream
        want = read_clip(corpus, {**loose.loc[row["clip_id"]].to_dict(), "clip_id": row["clip_id"]})
        for field in ("rgb", "right", "right_holes", "back", "back_holes", "disparity"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    # the training dataset reads packed corpora the same way
    a = StereoClipDataset(str(packed), num_frames=4, size=(32, 48))[0]
    b = StereoClipDataset(corpus, num_frames=4, size=(32, 48))[0]
    assert all(torch.equal(a[k], b[k]) for k in ("target", "rendered", "mask", "reference"))


def test_a_truncated_or_misaddressed_pack_is_a_clear_error_and_the_dataset_moves_on(packed, tmp_path, caplog):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(packed, broken)
    rows = load_manifest(str(broken)).to_dict("records")
    tar = broken / "shards" / "vid0.tar"
    tar.write_bytes(tar.read_bytes()[: rows[1]["shard_offset"] + 100])  # the second clip cut short
    with pytest.raises(ValueError, match="truncated pack"):
        read_clip(str(broken), rows[1])
    shifted = {
        **rows[0],
        "shard_offset": rows[0]["shard_offset"] + 512,
        "shard_size": rows[0]["shard_size"] - 512,
    }
    with pytest.raises(ValueError, match="at bytes 512"):
        read_clip(str(broken), shifted)
    with caplog.at_level("WARNING", logger="spatialdreamer.data.dataset"):
        sample = StereoClipDataset(str(broken), num_frames=4, size=(32, 48))[1]
    assert sample["clip_id"] == "vid1-c0" and "truncated pack" in caplog.text
