"""The corpus job on a local Ray: end to end with broken files, equal to the plain loop, resume.

One Ray session for the whole module (Ray's start-up is the slow part); only this module uses it.
"""

from __future__ import annotations

import json

import av
import pandas as pd
import pytest

from pipelines.build_dataset import build, load_config
from spatialdreamer.data import load_manifest
from spatialdreamer.data.shards import SHARD_FILES
from spatialdreamer.synth import iter_frames, random_spec
from spatialdreamer.synth.videos import write_scene
from spatialdreamer.video import VideoWriter

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three good synth videos and one file per kind of bad input, listed in a CSV manifest."""
    root = tmp_path_factory.mktemp("ray_inputs")
    good = [
        write_scene(random_spec(s, height=96, width=160, frames=40), root / "films", f"f{s}").left
        for s in range(3)
    ]
    bad = root / "bad"
    bad.mkdir()
    spec = random_spec(9, height=96, width=160, frames=40)
    with VideoWriter(bad / "whole.mkv", spec.fps) as writer:
        for frame in iter_frames(spec):
            writer.write(frame["left"][None])
    data = (bad / "whole.mkv").read_bytes()
    (bad / "cut.mkv").write_bytes(data[: len(data) // 2])
    (bad / "whole.mkv").unlink()
    mp4 = good[0].read_bytes()
    (bad / "half.mp4").write_bytes(mp4[: len(mp4) // 2])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video\n" * 30)
    with av.open(str(bad / "zero.mkv"), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        container.start_encoding()
    listing = root / "videos.csv"
    lines = ["path,source,license,tags"]
    lines += [f"films/{p.name},films,CC-BY,synth;pan" for p in good]
    lines += [f"bad/{name},broken,," for name in ("cut.mkv", "half.mp4", "empty.mp4", "text.mp4", "zero.mkv")]
    lines += ["bad/missing.mp4,broken,,"]
    listing.write_text("\n".join(lines) + "\n")
    return listing


@pytest.fixture(scope="module")
def corpus(ray_session, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_corpus") / "corpus"
    summary = build(str(inputs), str(root), load_config("tiny"))
    return root, summary


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["created_time"]).reset_index(drop=True)


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_ray_job_builds_the_corpus_and_records_every_bad_file(corpus):
    root, summary = corpus
    assert summary["videos"] == 9 and summary["videos_failed"] == 6  # cut.mkv: failed, 1 clip kept
    assert summary["videos_ok"] + summary["videos_failed"] == summary["videos"] == summary["inputs"]
    # 3 good videos x 5 clips, plus the clips of the truncated stream decoded before the cut
    clips = load_manifest(str(root))
    kept = int(clips.source_path.str.endswith("cut.mkv").sum())
    assert kept >= 1
    assert summary["clips_written"] == summary["clips_in_corpus"] == len(clips) == 15 + kept
    assert summary["frames_written"] == 8 * len(clips) and summary["failures"] == 6
    assert clips["clip_id"].is_unique
    assert (clips[["width", "height", "num_frames"]] == [128, 80, 8]).all().all()
    assert set(clips.loc[clips.source == "films", "tags"].map(tuple)) == {("synth", "pan")}
    for row in clips.itertuples():  # each clip's files are members of its segment's pack
        assert (root / row.shard).stat().st_size >= row.shard_offset + row.shard_size
        assert [getattr(row, column) for column in SHARD_FILES] == [
            f"{row.clip_id}.{name}" for name in SHARD_FILES.values()
        ]
    assert {p.suffix for p in (root / "shards").rglob("*") if p.is_file()} == {".tar"}
    assert len(list((root / "manifest").rglob("*.parquet"))) == clips.shard.nunique()
    failures = load_manifest(str(root), table="failures").set_index("path")
    stages = {
        p.rsplit("/", 1)[-1]: (s, e)
        for p, s, e in zip(failures.index, failures.stage, failures.error, strict=True)
    }
    assert stages["cut.mkv"][0] == "decode" and "truncated" in stages["cut.mkv"][1]
    assert {k: v[0] for k, v in stages.items() if k != "cut.mkv"} == {
        "half.mp4": "probe",
        "empty.mp4": "probe",
        "text.mp4": "probe",
        "zero.mkv": "probe",
        "missing.mp4": "probe",
    }
    assert "file not found" in stages["missing.mp4"][1] and "zero frames" in stages["zero.mkv"][1]


def test_ray_job_gives_the_same_corpus_as_the_plain_loop(corpus, inputs, tmp_path):
    root, _ = corpus
    plain = tmp_path / "plain"
    build(str(inputs), str(plain), load_config("tiny"), in_process=True)
    pd.testing.assert_frame_equal(
        _comparable(load_manifest(str(root))), _comparable(load_manifest(str(plain)))
    )
    pd.testing.assert_frame_equal(
        _comparable(load_manifest(str(root), table="failures")),
        _comparable(load_manifest(str(plain), table="failures")),
    )
    assert _files(root) - {"_SUCCESS.json"} == _files(plain) - {"_SUCCESS.json"}


def test_rerunning_a_finished_job_does_nothing(corpus, inputs):
    root, _ = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    summary = build(str(inputs), str(root), load_config("tiny"))
    assert (summary["videos_processed"], summary["clips_written"]) == (0, 0)
    assert summary["clips_in_corpus"] == len(load_manifest(str(root)))
    assert summary["failures"] == 6
    changed = {p.name for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert changed == set()


def test_rerun_redoes_only_the_lost_segments(corpus, inputs):
    root, _ = corpus
    reference = _comparable(load_manifest(str(root)))
    clips = load_manifest(str(root))
    lost = clips[clips.source == "films"].drop_duplicates("shard").head(2)  # two videos' packs
    for row in lost.itertuples():
        (root / row.shard).unlink()
        (root / "manifest" / row.video_id / f"part-{row.segment:04d}.parquet").unlink()
    redone = int(clips.shard.isin(lost.shard).sum())
    summary = build(str(inputs), str(root), load_config("tiny"))
    assert summary["videos_processed"] == 2 and summary["clips_written"] == redone
    assert summary["clips_in_corpus"] == len(reference)
    pd.testing.assert_frame_equal(_comparable(load_manifest(str(root))), reference)
    assert all((root / p).exists() for p in lost.shard)


def test_ray_job_decodes_a_long_video_as_segment_tasks(ray_session, tmp_path):
    from test_corpus_segments import FPS, _write_long

    _write_long(tmp_path / "long.mkv")
    root = tmp_path / "corpus"
    summary = build(str(tmp_path / "long.mkv"), str(root), load_config("tiny", {"segment_seconds": 1.0}))
    clips = load_manifest(str(root))
    # the same clips as the plain loop makes (tests/test_corpus_segments.py): segments at frames 20, 40
    ranges = list(zip(clips.start_frame, clips.end_frame, strict=True))
    assert ranges == [(0, 8), (8, 16), (16, 20), (20, 28), (28, 36), (36, 40)] + [
        (40, 48),
        (48, 56),
        (56, 64),
        (64, 72),
    ]
    assert summary["clips_written"] == 10 and list(clips.segment) == [0] * 3 + [1] * 3 + [2] * 4
    records = sorted((root / "_segments" / clips.video_id.iloc[0]).glob("*.json"))
    assert [json.loads(p.read_text())["frames"] for p in records] == [20, 20, 32]  # each its own range
    assert round(json.loads(records[2].read_text())["start"] * FPS) == 40


def test_packing_on_a_one_node_ray_starts_no_ray_task(ray_session, monkeypatch, tmp_path):
    """On the embedded one-node Ray the driver packs in its threads: a pack task beyond the warm
    workers would start a process that imports torch (~2.5 CPU-s) for ~0.02 CPU-s of packing."""
    import os

    import spatialdreamer.corpus as corpus
    from pipelines import build_dataset as job

    assert job._single_local_node(ray)
    packed_in = []

    def pack_video(row, root, config):
        packed_in.append(os.getpid())
        return {"packed": 2}

    monkeypatch.setattr(corpus, "pack_video", pack_video)
    monkeypatch.setattr(ray, "remote", lambda *a, **k: pytest.fail("pack_videos started a Ray task"))
    assert job.pack_videos(["v0", "v1", "v2"], str(tmp_path), load_config("tiny")) == 6
    assert packed_in == [os.getpid()] * 3


def test_packing_on_a_cluster_runs_a_ray_task_per_video(ray_session, monkeypatch, tmp_path):
    from pipelines import build_dataset as job

    remote, tasks = ray.remote, []
    monkeypatch.setattr(job, "_single_local_node", lambda ray: False)
    monkeypatch.setattr(ray, "remote", lambda *a, **k: tasks.append(k) or remote(*a, **k))
    assert job.pack_videos(["v0", "v1"], str(tmp_path), load_config("tiny")) == 0  # nothing to pack
    assert len(tasks) == 1 and tasks[0]["num_cpus"] == load_config("tiny").write_num_cpus
