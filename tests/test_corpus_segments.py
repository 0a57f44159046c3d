"""Long videos: keyframe-aligned segments that decode as separate tasks, exact IDs and resume."""

from __future__ import annotations

import io
import json
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import spatialdreamer.corpus.split as split_module
from pipelines.build_dataset import build, load_config
from spatialdreamer.corpus import keyframe_boundaries, plan_video
from spatialdreamer.corpus.sources import list_sources
from spatialdreamer.data import load_manifest
from spatialdreamer.synth import iter_frames, random_spec
from spatialdreamer.video import VideoError, probe_video

FPS, FRAMES, GOP = 24, 72, 10  # 3 s, a keyframe every 10 frames (0.417 s)


def _write_long(path, frames=FRAMES) -> None:
    """A pan (no cuts) in H.264 with a fixed GOP: keyframes at frames 0, 10, 20, ..."""
    spec = random_spec(3, height=96, width=160, frames=frames, fps=float(FPS))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0", "crf": "18"}
        for i, frame in enumerate(iter_frames(spec)):
            image = (frame["left"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    _write_long(folder / "long.mkv")
    return folder / "long.mkv"


@pytest.fixture(scope="module")
def config():
    return load_config("tiny", {"segment_seconds": 1.0})


def _decodes(monkeypatch) -> list[tuple]:
    """Record every range the split stage decodes: (start, end, first timestamp, frames)."""
    calls = []
    real = split_module.stream_arrays

    def recording(path, chunk_size, start=None, end=None, info=None):
        call = [start, end, None, 0]
        calls.append(call)
        for chunk in real(path, chunk_size, start=start, end=end, info=info):
            call[2] = float(chunk.timestamps[0]) if call[2] is None else call[2]
            call[3] += len(chunk)
            yield chunk

    monkeypatch.setattr(split_module, "stream_arrays", recording)
    return calls


def test_segments_start_at_the_keyframe_at_or_before_each_multiple(long_video, config, tmp_path):
    # multiples of 1 s fall inside GOPs: the segments start at the keyframes before them (frames 20, 40)
    assert keyframe_boundaries(str(long_video), 1.0) == pytest.approx([0.0, 20 / FPS, 40 / FPS], abs=1e-3)
    assert keyframe_boundaries(str(long_video), 0.0) == [0.0]
    assert keyframe_boundaries(str(long_video), 10.0) == [0.0]  # shorter than one segment: whole
    row = list_sources(str(long_video))[0]
    rows = plan_video(row, str(tmp_path), config)
    assert [(r["segment"], r["start"], r["end"]) for r in rows] == [
        (0, None, pytest.approx(20 / FPS, abs=1e-3)),
        (1, pytest.approx(20 / FPS, abs=1e-3), pytest.approx(40 / FPS, abs=1e-3)),
        (2, pytest.approx(40 / FPS, abs=1e-3), None),
    ]
    plan = json.loads((tmp_path / "_videos" / f"{row['video_id']}.json").read_text())
    assert plan["starts"] == pytest.approx([0.0, 20 / FPS, 40 / FPS], abs=1e-3)


def test_a_long_video_decodes_by_segment_and_a_lost_segment_alone_is_redone(
    long_video, config, tmp_path, monkeypatch
):
    calls = _decodes(monkeypatch)
    root = tmp_path / "corpus"
    summary = build(str(long_video), str(root), config, in_process=True)
    # each segment is decoded from its own keyframe: range reads, never from frame 0
    assert [(c[0] is None, round(c[2] * FPS), c[3]) for c in calls] == [
        (True, 0, 20),
        (False, 20, 20),
        (False, 40, 32),
    ]
    clips = load_manifest(str(root))
    vid = clips.video_id.iloc[0]
    # IDs are frame ranges of the whole video; clips never cross a segment boundary (20, 40)
    ranges = list(zip(clips.start_frame, clips.end_frame, strict=True))
    assert ranges == [
        (0, 8),
        (8, 16),
        (16, 20),
        (20, 28),
        (28, 36),
        (36, 40),
        (40, 48),
        (48, 56),
        (56, 64),
        (64, 72),
    ]
    assert list(clips.clip_id) == [f"{vid}-{a:06d}-{b:06d}" for a, b in ranges]
    assert list(clips.segment) == [0] * 3 + [1] * 3 + [2] * 4 and summary["clips_written"] == 10
    assert sorted(p.name for p in (root / "shards" / vid).iterdir()) == ["0000.tar", "0001.tar", "0002.tar"]
    # a lost segment (its pack and manifest part gone) is redone alone, to the same rows
    (root / "shards" / vid / "0001.tar").unlink()
    (root / "manifest" / vid / "part-0001.parquet").unlink()
    calls.clear()
    again = build(str(long_video), str(root), config, in_process=True)
    assert again["clips_written"] == 3 and [round(c[2] * FPS) for c in calls] == [20]
    pd.testing.assert_frame_equal(
        load_manifest(str(root)).drop(columns="created_time"), clips.drop(columns="created_time")
    )


def test_a_truncated_long_video_keeps_the_segments_before_the_damage(config, tmp_path):
    _write_long(tmp_path / "whole.mkv")
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "cut.mkv").write_bytes(data[: len(data) // 2])
    root = tmp_path / "corpus"
    summary = build(str(tmp_path / "videos"), str(root), config, in_process=True)
    failures = load_manifest(str(root), table="failures")
    assert list(failures.stage) == ["decode"] and summary["videos_failed"] == 1
    assert "truncated" in failures.error.iloc[0] or "no frames" in failures.error.iloc[0]
    clips = load_manifest(str(root))
    assert set(clips.segment) >= {0} and clips.end_frame.max() < FRAMES  # the first segment is kept


def test_retry_failed_redoes_a_video_whose_packed_segment_lost_a_clip(config, tmp_path, monkeypatch):
    import spatialdreamer.corpus.write as write_module
    from spatialdreamer.synth.videos import write_scene

    video = write_scene(random_spec(4, height=96, width=160, frames=24), tmp_path / "in", "v").left
    real = write_module.write_clip_files
    broken = {"calls": 0}

    def second_clip_fails(root, batch, i):
        broken["calls"] += 1
        if broken["calls"] == 2:
            raise ValueError("disk says no")
        return real(root, batch, i)

    monkeypatch.setattr(write_module, "write_clip_files", second_clip_fails)
    root = str(tmp_path / "corpus")
    first = build(str(video), root, config, in_process=True)
    assert first["failures"] == 1 and first["clips_in_corpus"] == first["clips_written"] == 2
    monkeypatch.setattr(write_module, "write_clip_files", real)
    again = build(str(video), root, config, in_process=True, retry_failed=True)
    assert again["failures"] == 0 and again["clips_in_corpus"] == 3
    clips = load_manifest(root)
    assert len(clips) == 3 and clips.shard.nunique() == 1  # the retried clip is in the pack


class _CountingFile(io.RawIOBase):
    """A local file that counts the bytes read through it (a stand-in for range GETs)."""

    def __init__(self, path: str, counter: dict):
        self._file, self._counter = open(path, "rb"), counter  # noqa: SIM115 (closed in close)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        self._counter["bytes"] += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


class _CountingRemote(pafs.FileSystemHandler):
    """A read-only "remote" filesystem over local files that counts every byte read."""

    def __init__(self, counter: dict):
        self.local, self.counter = pafs.LocalFileSystem(), counter

    def __eq__(self, other) -> bool:
        return isinstance(other, _CountingRemote)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def open_input_file(self, path: str):
        return pa.PythonFile(_CountingFile(path, self.counter), mode="r")

    open_input_stream = open_input_file

    def _read_only(self, *args):
        raise NotImplementedError("read-only test filesystem")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def _write_noisy(path, frames: int) -> None:
    """160x96 H.264 at high quality, a keyframe every 12 frames: ~9 KB a frame, so byte counts
    tell a segment's range from the whole file."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"x264-params": "keyint=12:min-keyint=12:scenecut=0", "crf": "10"}
        for i in range(frames):
            image = np.roll(base, 3 * i, axis=1).astype(np.int16) + rng.integers(-20, 20, base.shape)
            frame = av.VideoFrame.from_ndarray(image.clip(0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_remote_segment_is_read_by_range_and_splits_like_the_local_file(tmp_path, monkeypatch):
    from spatialdreamer.corpus import split_video
    from spatialdreamer.data import storage
    from spatialdreamer.video import probe as probe_module

    video = tmp_path / "long.mkv"
    _write_noisy(video, 8 * 2 * FPS)  # 16 s: eight segments of 2 s
    size = video.stat().st_size
    counter = {"bytes": 0}
    real = storage.open_filesystem

    def remote_or_real(path):
        if str(path).startswith("count://"):
            return pafs.PyFileSystem(_CountingRemote(counter)), str(path)[len("count://") :]
        return real(path)

    monkeypatch.setattr(storage, "open_filesystem", remote_or_real)
    monkeypatch.setattr(probe_module, "REMOTE_READ_BYTES", 64 * 1024)  # object stores: 1 MiB
    config = load_config("tiny", {"segment_seconds": 2.0})
    local_row = list_sources(str(video))[0]
    remote_row = {**local_row, "path": f"count://{video}"}

    planned = plan_video(remote_row, str(tmp_path / "remote"), config)
    assert [r["segment"] for r in planned] == list(range(8))
    assert counter["bytes"] < size / 2  # the index and a packet per boundary, not the file

    def clips(row, root):
        return [(c["start_frame"], c["end_frame"], c["frames"]) for c in split_video(row, root, config)]

    last = planned[-1]
    counter["bytes"] = 0
    remote = clips(last, str(tmp_path / "remote"))
    # the probe (header, first frame, the tail for the stream's length) and about an eighth
    assert 0 < counter["bytes"] < 0.35 * size
    counter["bytes"] = 0
    local = clips({**last, "path": local_row["path"]}, str(tmp_path / "local"))
    assert counter["bytes"] == 0  # a local path never goes through pyarrow
    assert [c[:2] for c in remote] == [c[:2] for c in local] and remote[0][0] == 7 * 2 * FPS
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(remote, local, strict=True))
    with pytest.raises(VideoError, match="file not found"):
        probe_video(f"count://{tmp_path}/missing.mkv")
    with pytest.raises(VideoError, match="is a directory"):
        probe_video(f"count://{tmp_path}")
