"""StereoClipDataset over a corpus, resize/pad helpers and the per-rank step sampler."""

from __future__ import annotations

import pytest
import torch
from train_helpers import CLIPS, HEIGHT, WIDTH

from spatialdreamer.data import load_manifest
from spatialdreamer.data.dataset import StereoClipDataset, fit_frames, resize_cover
from spatialdreamer.data.shards import read_clip
from spatialdreamer.models.reference import reference_view, rendered_view
from spatialdreamer.train import StepBatchSampler


def test_samples_are_the_warp_back_triple_with_shapes_dtypes_and_ranges(corpus):
    ds = StereoClipDataset(corpus, num_frames=4, size=(32, 48))
    assert len(ds) == len(CLIPS)
    sample = ds[0]
    for key in ("target", "rendered", "reference"):
        assert sample[key].shape == (4, 3, 32, 48) and sample[key].dtype == torch.float32
        assert sample[key].min() >= 0.0 and sample[key].max() <= 1.0
    assert sample["mask"].shape == (4, 1, 32, 48) and sample["mask"].dtype == torch.bool
    assert 0 < sample["mask"].float().mean() < 0.5  # the warp-back view has some holes, not all
    # holes are pre-filled from the farther side, exactly as convert --refiner conditions the model
    back = resize_cover(read_clip(corpus, load_manifest(corpus).iloc[0].to_dict()).back[:4], (32, 48))
    assert torch.equal(sample["rendered"], rendered_view(back, sample["mask"], sample["disparity"]))
    assert not (sample["rendered"].amax(1, keepdim=True)[sample["mask"]] == 0).all()
    # the target is the source clip (decoded, resized to cover, centre-cropped); input and
    # reference are other views: close to it away from holes, but not equal
    clip = read_clip(corpus, load_manifest(corpus).iloc[0].to_dict())
    torch.testing.assert_close(sample["target"], resize_cover(clip.rgb[:4], (32, 48)))
    valid = ~sample["mask"].expand_as(sample["rendered"])
    err = (sample["rendered"] - sample["target"]).abs()[valid].mean()
    assert err < 0.05
    assert not torch.equal(sample["reference"], sample["target"])
    # the reference is complete, built exactly as at inference: the warped other eye, its holes
    # filled from the background side (no black holes that inference never shows)
    right_holes = resize_cover(clip.right_holes[:4], (32, 48), mask=True)
    expected = reference_view(resize_cover(clip.right[:4], (32, 48)), right_holes)
    assert right_holes.any() and torch.equal(sample["reference"], expected)
    assert not (sample["reference"].amax(1, keepdim=True)[right_holes] == 0).all()


def test_clip_cache_decodes_each_clip_once(corpus, monkeypatch):
    import spatialdreamer.data.dataset as dataset_module

    calls = []

    def counting(root, row):
        calls.append(row["clip_id"])
        return read_clip(root, row)

    monkeypatch.setattr(dataset_module, "read_clip", counting)
    cached = StereoClipDataset(corpus, num_frames=1, size=(32, 48), cache_clips=8)
    first = [cached[i]["target"] for i in range(len(cached))]
    again = [cached[i]["target"] for i in range(len(cached))]
    assert len(calls) == len(CLIPS) and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    calls.clear()
    plain = StereoClipDataset(corpus, num_frames=1, size=(32, 48))
    assert all(torch.equal(plain[i]["target"], first[i]) for i in range(len(plain)))
    assert len(calls) == len(plain)  # one decode per access without a cache
    with pytest.raises(ValueError, match="cache_clips"):
        StereoClipDataset(corpus, num_frames=1, cache_clips=-1)


def test_native_size_and_windows_follow_num_frames_and_stride(corpus):
    ds = StereoClipDataset(corpus, num_frames=2, stride=2)
    # 6-frame clips give windows at 0, 2, 4; the 3-frame clip at 0 only (1 is not a full stride)
    assert [(w.row, w.start) for w in ds.windows] == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
    sample = ds[2]
    assert sample["target"].shape == (2, 3, HEIGHT, WIDTH) and sample["start"] == 4
    clip = read_clip(corpus, load_manifest(corpus).iloc[0].to_dict())
    assert torch.equal(sample["target"], clip.rgb[4:6])


def test_short_clips_repeat_their_last_frame(corpus):
    ds = StereoClipDataset(corpus, num_frames=5, query="num_frames < 5")
    assert ds.clip_ids == ["vid1-c0"]
    sample = ds[0]
    assert sample["target"].shape[0] == 5
    for key in ("target", "rendered", "mask", "reference"):
        assert torch.equal(sample[key][3], sample[key][2]) and torch.equal(sample[key][4], sample[key][2])
    assert not torch.equal(sample["target"][1], sample["target"][2])  # real frames stay distinct
    x = torch.arange(3.0).view(3, 1)
    assert fit_frames(x, 1, 4).flatten().tolist() == [1.0, 2.0, 2.0, 2.0]


def test_query_filters_clips(corpus):
    manifest = load_manifest(corpus)
    threshold = float(manifest["hole_ratio"].median())
    ds = StereoClipDataset(corpus, num_frames=4, size=(32, 48), query=f"hole_ratio > {threshold}")
    expected = manifest.loc[manifest.hole_ratio > threshold, "clip_id"].tolist()
    assert ds.clip_ids == expected and 0 < len(expected) < len(manifest)
    assert {ds[i]["clip_id"] for i in range(len(ds))} == set(expected)


def test_an_unreadable_clip_is_skipped_for_the_next_window(corpus, tmp_path, caplog):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "shards" / "vid0" / "vid0-c0" / "back.mp4").write_bytes(b"not a video")
    ds = StereoClipDataset(broken, num_frames=4, size=(32, 48))
    with caplog.at_level("WARNING", logger="spatialdreamer.data.dataset"):
        sample = ds[0]
    assert sample["clip_id"] == "vid0-c1"  # the next window stands in
    assert "skipping unreadable clip vid0-c0" in caplog.text
    assert torch.equal(sample["target"], StereoClipDataset(corpus, num_frames=4, size=(32, 48))[1]["target"])
    for cid in ("vid0-c1", "vid1-c0"):
        (broken / "shards" / cid.split("-")[0] / cid / "rgb.mp4").unlink()
    with pytest.raises(RuntimeError, match="no readable clip near sample 1"):
        ds[1]


def test_resize_cover_keeps_every_hole_when_shrinking():
    mask = torch.zeros(1, 1, 40, 64, dtype=torch.bool)
    mask[0, 0, 21, 33] = True  # one hole pixel
    small = resize_cover(mask, (20, 32), mask=True)
    assert small.dtype == torch.bool and small.shape == (1, 1, 20, 32) and small.sum() >= 1
    image = torch.rand(2, 3, 40, 64)
    out = resize_cover(image, (32, 32))  # scale 0.8 → 32x51, centre crop of width 32
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(resize_cover(image, (40, 64)), image)  # already the size: untouched


def test_bad_corpus_inputs_give_clear_errors(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no clips table"):
        StereoClipDataset(tmp_path / "nowhere", num_frames=4)
    with pytest.raises(ValueError, match="no clips in .* match query"):
        StereoClipDataset(corpus, num_frames=4, query="hole_ratio > 2")
    with pytest.raises(ValueError, match="bad query"):
        StereoClipDataset(corpus, num_frames=4, query="no_such_column > 1")
    with pytest.raises(ValueError, match="num_frames"):
        StereoClipDataset(corpus, num_frames=0)


def test_step_sampler_deals_disjoint_shards_and_resumes_at_any_step():
    n, batch, steps = 7, 2, 10
    per_rank = [
        list(StepBatchSampler(n, batch, rank=r, world_size=2, seed=3, total_steps=steps)) for r in (0, 1)
    ]
    assert all(len(b) == steps and all(len(x) == batch for x in b) for b in per_rank)
    # first epoch: 4 samples per rank (7 padded to 8 by wrapping), ranks disjoint but for the pad
    first = [set(sum(b[:2], [])) for b in per_rank]
    assert first[0] | first[1] == set(range(n)) and len(first[0] & first[1]) <= 1
    # a sampler started at step 6 yields exactly the uninterrupted run's batches 6..9
    resumed = list(StepBatchSampler(n, batch, rank=1, world_size=2, seed=3, start_step=6, total_steps=steps))
    assert resumed == per_rank[1][6:]
    # epochs reshuffle
    epochs = [per_rank[0][i : i + 2] for i in (0, 2)]
    assert epochs[0] != epochs[1]
