"""What a real video library feeds the corpus job: every input listed once, the job's own output
and symlink loops never walked, every entry left out recorded with its reason, and real-world
files split by their video stream (never called truncated because of the container)."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_video_real_world import (
    _garble_first_packets,
    _png_bytes,
    _rewrite_ts,
    _strip_stream_durations,
    _write_short_video_long_audio,
    _write_two_video_streams,
    _write_video,
)

from pipelines.build_dataset import build, load_config
from spatialdreamer.corpus import LIST_STAGE, find_sources, list_sources, split_video
from spatialdreamer.corpus.segments import read_segment_record
from spatialdreamer.data import load_manifest
from spatialdreamer.data.ids import video_id


def _tiny_video(path: Path, frames: int = 12, size=(64, 48), fmt: str | None = None) -> Path:
    return _write_video(path, [size] * frames, rate=24, fmt=fmt)


def _gif(path: Path, frames: int = 12) -> Path:
    with av.open(str(path), mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=12)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb8"
        for i in range(frames):
            img = np.zeros((32, 48, 3), np.uint8)
            img[:, (i * 3) % 44 : (i * 3) % 44 + 4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="rgb8")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A folder shaped like a real library: good videos in several containers and the entries
    that are not videos."""
    root = tmp_path_factory.mktemp("library")
    good = _tiny_video(root / "good.mp4")
    _tiny_video(root / "camcorder.MTS", fmt="mpegts")
    _tiny_video(root / "bluray.m2ts", fmt="mpegts")
    _gif(root / "animated.gif")
    (root / "folder.mp4").mkdir()  # a folder named like a video: reported, and walked
    _tiny_video(root / "folder.mp4" / "inside.mkv")
    (root / "._good.mp4").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # macOS AppleDouble
    os.symlink(root / "missing.mp4", root / "dangling.mp4")
    os.symlink(root / "loop_b.mp4", root / "loop_a.mp4")
    os.symlink(root / "loop_a.mp4", root / "loop_b.mp4")
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")  # a folder loop
    os.symlink(good, root / "sub" / "same_as_good.mp4")  # one file, two paths
    return root


def test_a_folder_lists_each_video_once_and_reports_what_it_leaves_out(library):
    listing = find_sources(str(library))
    names = sorted(os.path.relpath(v["path"], library) for v in listing.videos)
    assert names == ["animated.gif", "bluray.m2ts", "camcorder.MTS", "folder.mp4/inside.mkv", "good.mp4"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in listing.skipped}
    assert set(reasons) == {"._good.mp4", "dangling.mp4", "loop_a.mp4", "loop_b.mp4", "folder.mp4"}
    assert "AppleDouble" in reasons["._good.mp4"]
    assert "broken symbolic link" in reasons["dangling.mp4"]
    assert reasons["loop_a.mp4"] == "is a symbolic link loop"
    assert reasons["folder.mp4"] == "is a folder, not a video file"


def test_the_jobs_output_and_other_corpora_inside_the_input_are_never_listed(tmp_path):
    _tiny_video(tmp_path / "a.mp4")
    out = tmp_path / "corpus"
    (out / "shards" / "v").mkdir(parents=True)
    _tiny_video(out / "shards" / "v" / "rgb.mp4")
    older = tmp_path / "old_corpus"
    (older / "shards").mkdir(parents=True)
    (older / "_job.json").write_text("{}")
    _tiny_video(older / "shards" / "rgb.mp4")
    for spec in (str(tmp_path), str(tmp_path / "**" / "*.mp4")):
        assert [v["path"] for v in list_sources(spec, exclude=[str(out)])] == [str(tmp_path / "a.mp4")]


def test_one_file_listed_five_ways_in_a_manifest_is_one_video(tmp_path):
    video = _tiny_video(tmp_path / "v.mp4")
    os.symlink(video, tmp_path / "alias.mp4")
    csv = tmp_path / "inputs.csv"
    csv.write_text(f"path\nv.mp4\nv.mp4\n./v.mp4\n{video}\nalias.mp4\n")
    rows = list_sources(str(csv))
    assert len(rows) == 1 and rows[0]["path"] == str(video)


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


def _split(path: Path, root: Path, config) -> tuple[list[dict], dict, list[dict]]:
    row = {"path": str(path), "video_id": video_id(str(path)), "source": "t", "license": "", "tags": []}
    clips = list(split_video(row, str(root), config))
    record = read_segment_record(str(root), row["video_id"], 0)  # a short video is one segment
    failures = [json.loads(p.read_text()) for p in (root / "_failures").rglob("*.json")]
    return clips, record, failures


@pytest.mark.parametrize(("frames", "expected"), [(1, "1 frames"), (3, "3 frames")])
def test_a_video_too_short_for_a_clip_is_recorded_with_why(tmp_path, tiny, frames, expected):
    clips, record, failures = _split(_tiny_video(tmp_path / "short.mp4", frames), tmp_path / "c", tiny)
    assert clips == [] and record["status"] == "no clips"
    assert len(failures) == 1 and failures[0]["stage"] == "split"
    assert "too short for a clip" in failures[0]["error"] and expected in failures[0]["error"]


def test_a_png_named_like_a_video_is_recorded_as_a_still_image(tmp_path, tiny):
    path = tmp_path / "photo.mp4"
    path.write_bytes(_png_bytes(np.full((32, 48, 3), 128, np.uint8)))
    clips, record, failures = _split(path, tmp_path / "c", tiny)
    assert clips == [] and record["status"] == "failed in probe"
    assert failures[0]["error"].endswith("is a still image, not a video")


def _real_world(tmp: Path, kind: str) -> tuple[Path, int]:
    """A file of ``kind`` and the frames it holds."""
    if kind == "two_video_streams":
        return _write_two_video_streams(tmp / "two.mkv"), 24
    if kind == "audio_outlasts_video":
        return _strip_stream_durations(_write_short_video_long_audio(tmp / "long_audio.mkv")), 24
    if kind == "sparse_vfr":
        stamps = [i * 33 for i in range(10)] + [3300 + i * 33 for i in range(10)]
        path = _write_video(tmp / "screen.mkv", [(48, 32)] * 20, time_base=Fraction(1, 1000), pts=stamps)
        return _strip_stream_durations(path), 20
    clean = _write_video(tmp / "clean.ts", [(64, 48)] * 36, rate=25, fmt="mpegts", gop=12)
    if kind == "ts_joined_mid_gop":
        return _rewrite_ts(clean, tmp / "joined_late.ts", keep_frame=lambda i: i >= 5), 24
    source = _write_video(tmp / "clean.mkv", [(64, 48)] * 36, rate=25, gop=12)
    return _garble_first_packets(source, tmp / "garbled.mkv", 3), 24  # corrupt first packets


@pytest.mark.parametrize(
    "kind",
    ["two_video_streams", "audio_outlasts_video", "sparse_vfr", "ts_joined_mid_gop", "corrupt_first_packets"],
)
def test_real_world_files_are_split_by_their_video_stream_not_called_truncated(tmp_path, tiny, kind):
    path, frames = _real_world(tmp_path, kind)
    clips, record, failures = _split(path, tmp_path / "c", tiny)
    assert record["status"] == "complete" and failures == []
    assert record["frames"] == frames and len(clips) >= 2


def test_an_anamorphic_source_is_recorded_and_cropped_at_its_display_size(tmp_path, tiny):
    path = _write_video(tmp_path / "anamorphic.mp4", [(96, 72)] * 12, sar=Fraction(4, 3))
    clips, _, _ = _split(path, tmp_path / "c", tiny)
    assert (clips[0]["source_width"], clips[0]["source_height"]) == (128, 72)
    # the gradient's red ramp spans the crop evenly: the picture was widened before cropping
    red = clips[0]["frames"][0, :, :, 0].astype(float).mean(0)
    assert abs((red[-1] - red[0]) / len(red) - 255 / 128) < 0.3


def test_the_job_records_every_input_left_out_and_its_counts_add_up(library, tmp_path, tiny):
    summary = build(str(library), str(tmp_path / "corpus"), tiny, in_process=True)
    failures = load_manifest(str(tmp_path / "corpus"), table="failures")
    listed = failures[failures["stage"] == LIST_STAGE]
    assert sorted(os.path.basename(p) for p in listed["path"]) == [
        "._good.mp4",
        "dangling.mp4",
        "folder.mp4",
        "loop_a.mp4",
        "loop_b.mp4",
    ]
    assert summary["inputs"] == summary["videos"] + summary["inputs_not_videos"] == 10
    assert summary["videos"] == summary["videos_ok"] + summary["videos_failed"] == 5
    assert summary["videos"] == summary["videos_processed"] + summary["videos_already_done"]
    again = build(str(library), str(tmp_path / "corpus"), tiny, in_process=True)
    assert again["videos_already_done"] == 5 and again["clips_in_corpus"] == summary["clips_in_corpus"]
    assert again["failures"] == summary["failures"]


def test_a_folder_on_a_filesystem_uri_is_listed_with_the_same_rules(tmp_path):
    _tiny_video(tmp_path / "a.mp4")
    (tmp_path / "._a.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "named.mkv").mkdir()
    (tmp_path / "out" / "shards").mkdir(parents=True)
    _tiny_video(tmp_path / "out" / "shards" / "rgb.mp4")
    listing = find_sources(f"file://{tmp_path}", exclude=[f"file://{tmp_path / 'out'}"])
    assert [v["path"] for v in listing.videos] == [f"file://{tmp_path / 'a.mp4'}"]
    assert {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in listing.skipped} == {
        "._a.mp4": "is a macOS metadata file (an AppleDouble '._' companion), not a video",
        "named.mkv": "is a folder, not a video file",
    }
